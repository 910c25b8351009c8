"""The vault's wallets against real or rebuilt backends: Cashu (a real Nutshell mint), LND (a gRPC node over TLS), the wallet protocol's shape, LND macaroons."""
