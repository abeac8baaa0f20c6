from hypothesis import given
from hypothesis import strategies as st
from streamml.state import keys

accounts = st.binary(min_size=0, max_size=64)
features = st.integers(0, 0xFFFF)
partitions = st.text(max_size=40)


@given(features, accounts)
def test_account_key_round_trip(feature, account):
    assert keys.decode_account_key(keys.account_key(feature, account)) == (feature, account)


@given(partitions)
def test_position_key_round_trip(partition):
    assert keys.decode_position_key(keys.position_key(partition)) == partition


@given(features, accounts, accounts)
def test_keys_of_one_feature_sort_like_accounts(feature, a, b):
    ka, kb = keys.account_key(feature, a), keys.account_key(feature, b)
    assert (ka < kb) == (a < b)


@given(features, features, accounts, accounts)
def test_features_sort_by_id_first(f1, f2, a, b):
    if f1 < f2:
        assert keys.account_key(f1, a) < keys.account_key(f2, b)


@given(features, accounts, partitions, st.text(max_size=10))
def test_namespaces_are_isolated(feature, account, partition, name):
    k = keys.account_key(feature, account)
    assert k.startswith(keys.account_prefix(feature))
    assert not keys.position_key(partition).startswith(keys.account_prefix(feature))
    assert not keys.meta_key(name).startswith(keys.account_prefix(feature))
    assert not k.startswith(keys.position_key(""))
    for other in range(0, 0xFFFF, 4099):
        if other != feature:
            assert not k.startswith(keys.account_prefix(other))


@given(partitions, st.integers(0, 2**63 - 1))
def test_outbox_key_round_trip(partition, position):
    assert keys.decode_outbox_key(keys.outbox_key(partition, position)) == (partition, position)


@given(partitions, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_outbox_keys_sort_by_position_within_a_partition(partition, a, b):
    assert (keys.outbox_key(partition, a) < keys.outbox_key(partition, b)) == (a < b)


@given(partitions, partitions, st.integers(0, 2**40))
def test_outbox_partitions_are_isolated(p1, p2, position):
    if p1 != p2:
        assert not keys.outbox_key(p1, position).startswith(keys.outbox_prefix(p2))
