"""The shared runtime and the bus: the KV follower, the network guard, the table of bus exchanges, bus permissions, the layout's import rules."""
