#!/usr/bin/env bash
# Bring the regtest rails of compose.yaml to life: coins for the vault's LND, a channel from it to the mint's LND
# (with some sats pushed across, so the mint can pay the vault too), and the vault's own macaroon — baked with
# exactly the permissions the vault checks for — then a vault restart to pick it up. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; . ./.env; set +a

btc() { docker compose exec -T bitcoind bitcoin-cli -regtest -rpcuser="$BITCOIND_RPC_USER" \
          -rpcpassword="$BITCOIND_RPC_PASSWORD" "$@"; }
ln() { local node=$1; shift; docker compose exec -T "$node" lncli --network=regtest "$@"; }
field() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }

btc createwallet miner >/dev/null 2>&1 || btc loadwallet miner >/dev/null 2>&1 || true
miner=$(btc getnewaddress)
btc generatetoaddress 101 "$miner" >/dev/null
addr=$(ln lnd newaddress p2wkh | field address)
btc sendtoaddress "$addr" 1 >/dev/null
btc generatetoaddress 6 "$miner" >/dev/null
until ln lnd getinfo | grep -q '"synced_to_chain": true'; do sleep 1; done

mint_key=$(ln lnd-mint getinfo | field identity_pubkey)
ln lnd connect "$mint_key@lnd-mint:9735" >/dev/null 2>&1 || true
if ! ln lnd listchannels | grep -q "$mint_key"; then
  ln lnd openchannel --node_key "$mint_key" --local_amt 5000000 --push_amt 1000000 >/dev/null
  btc generatetoaddress 6 "$miner" >/dev/null
fi

docker compose exec -T lnd lncli --network=regtest bakemacaroon --save_to=/root/.lnd/vault.macaroon \
  info:read invoices:read invoices:write offchain:read offchain:write >/dev/null
docker compose exec -T lnd chown 65534:65534 /root/.lnd/vault.macaroon   # the vault runs as nobody
docker compose restart vault
echo "regtest rails ready: channel lnd -> lnd-mint open, vault macaroon baked"
