"""The test harness: fakes of the outside world (LND, Routstr nodes, a Nutshell mint, a Nostr relay, price feeds),
stack builders and small helpers. No tests here."""
