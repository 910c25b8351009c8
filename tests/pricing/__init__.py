"""Pricing and the market: the price table, live feeds and listings, Routstr nodes on Nostr, paying nodes (top-ups, X-Cashu), the demo market."""
