"""The vault: its pure core (fold, deciders, policy, partitions, grants, top-up planning) and the actor over NATS and HTTP (rails, payouts, crashes, storms, timers, the watchdog)."""
