"""The LND macaroon reader: real macaroons baked by LND (regtest nodes, published as examples) decode to the
permissions LND put in them, the test node's minter round-trips, and the vault's permission check is exact."""

from __future__ import annotations

import pytest

from actors.vault.wallets import macaroons
from tests.support.lnd_node import ADMIN_OPS, VAULT_OPS, mint_macaroon

# An admin.macaroon as LND writes it (a Polar regtest node).
LND_ADMIN = bytes.fromhex(
    "0201036c6e6402f801030a10253d7f7c2d1d8d0d79749376a266e7241201301a160a0761646472657373120472656164120577726974651a"
    "130a04696e666f120472656164120577726974651a170a08696e766f69636573120472656164120577726974651a210a086d616361726f"
    "6f6e120867656e6572617465120472656164120577726974651a160a076d657373616765120472656164120577726974651a170a086f66"
    "66636861696e120472656164120577726974651a160a076f6e636861696e120472656164120577726974651a140a057065657273120472"
    "656164120577726974651a180a067369676e6572120867656e657261746512047265616400000620ffa5ce4d61d5439bed13aaef324b21"
    "fb85acfaa2a75b1e38db7e9b4ed85e7c48")
# LND's invoice.macaroon: invoices plus address and on-chain reads — more than the vault may hold.
LND_INVOICE = bytes.fromhex(
    "0201036c6e640258030a10233d7f7c2d1d8d0d79749376a266e7241201301a160a0761646472657373120472656164120577726974651a"
    "170a08696e766f69636573120472656164120577726974651a0f0a076f6e636861696e12047265616400000620f0d91772d00773e1ebae"
    "59311804d53dd5abe3808fcb6a04b07dacb6c36c9608")
# An info:read macaroon constrained to one IP address (a first-party caveat).
LND_INFO_IPADDR = bytes.fromhex(
    "0201036c6e640224030a10b493608461fb6e64810053fa31ef27991201301a0c0a04696e666f120472656164000216697061646472203139"
    "322e3136382e3139322e3136380000062072ea006233da839ce6e9f4721331a12041b228d36c0fdad552680f615766d2f4")


def test_real_lnd_macaroons_decode_to_their_permissions() -> None:
    admin = macaroons.decode(LND_ADMIN)
    assert (admin.location, admin.caveats, len(admin.signature)) == ("lnd", (), 32)
    mid = macaroons.parse_lnd_id(admin.identifier)
    assert (mid.storage_id, len(mid.nonce)) == (b"0", 16)
    assert mid.permissions == {(e, a) for e, actions in ADMIN_OPS.items() for a in actions}

    assert macaroons.permissions(LND_INVOICE) == {("address", "read"), ("address", "write"), ("invoices", "read"),
                                                  ("invoices", "write"), ("onchain", "read")}

    info = macaroons.decode(LND_INFO_IPADDR)
    assert [c.identifier for c in info.caveats] == [b"ipaddr 192.168.192.168"]
    assert macaroons.parse_lnd_id(info.identifier).permissions == {("info", "read")}


def test_the_vault_check_refuses_more_and_less_than_it_needs() -> None:
    with pytest.raises(macaroons.MacaroonError, match="grants more.*macaroon:generate.*onchain:write"):
        macaroons.check_vault_macaroon(LND_ADMIN)
    with pytest.raises(macaroons.MacaroonError, match=r"grants more than the vault needs \(address:read, "
                                                      r"address:write, onchain:read\)"):
        macaroons.check_vault_macaroon(LND_INVOICE)
    with pytest.raises(macaroons.MacaroonError, match="lacks.*invoices:read.*offchain:write"):
        macaroons.check_vault_macaroon(LND_INFO_IPADDR)
    key = b"k" * 32
    assert macaroons.check_vault_macaroon(mint_macaroon(key, VAULT_OPS)) == macaroons.VAULT_PERMISSIONS
    # A per-method grant is a permission too: refused like any other extra.
    with pytest.raises(macaroons.MacaroonError, match="uri:/lnrpc.Lightning/SendCoins"):
        macaroons.check_vault_macaroon(mint_macaroon(key, {**VAULT_OPS, "uri": ["/lnrpc.Lightning/SendCoins"]}))
    # Caveats only narrow a macaroon: they do not change the verdict.
    narrowed = mint_macaroon(key, VAULT_OPS, caveats=("time-before 2999-01-01T00:00:00Z",))
    assert len(macaroons.decode(narrowed).caveats) == 1
    assert macaroons.check_vault_macaroon(narrowed) == macaroons.VAULT_PERMISSIONS


@pytest.mark.parametrize("data, message", [
    (b"", "not a version 2"),
    (b"\x01abc", "not a version 2"),
    (LND_ADMIN[:-5], "past the end"),
    (LND_ADMIN + b"\x00", "trailing bytes"),
    (LND_ADMIN[:3] + b"\x02\x05\x01abcd", "past the end"),
])
def test_malformed_macaroons_are_refused_without_quoting_them(data: bytes, message: str) -> None:
    with pytest.raises(macaroons.MacaroonError, match=message) as e:
        macaroons.permissions(data)
    if data:
        assert data[:8].hex() not in str(e.value)


def test_an_identifier_that_is_not_lnds_is_refused() -> None:
    with pytest.raises(macaroons.MacaroonError, match="not an LND macaroon"):
        macaroons.parse_lnd_id(b"\x02" + b"x" * 16 + b"root")
    with pytest.raises(macaroons.MacaroonError, match="no permissions"):
        macaroons.parse_lnd_id(b"\x03\x0a\x02ab")
