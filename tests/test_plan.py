import pytest

from graphprune.allocate import n_remove
from graphprune.errors import UsageError
from graphprune.options import PruneOptions
from graphprune.plan import GroupPlan, Plan


@pytest.mark.parametrize(
    "units,ratio,round_to,min_keep,removed",
    [
        (64, 0.5, 1, 1, 32),
        (64, 0.3, 1, 1, 19),
        (64, 0.3, 8, 1, 16),  # keep 45 -> nearest multiple of 8 is 48
        (10, 0.99, 1, 1, 9),  # at least one kept
        (10, 0.5, 1, 8, 2),  # min_keep wins
        (4, 0.5, 8, 1, 2),  # group smaller than round_to: plain ratio
        (1, 0.9, 1, 1, 0),
    ],
)
def test_n_remove(units, ratio, round_to, min_keep, removed):
    assert n_remove(units, ratio, round_to, min_keep) == removed


def test_plan_round_trip(tmp_path):
    p = Plan([GroupPlan("a[1]", "channel", 8, [1, 3])], criterion="l1", ratio=0.25)
    p.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == p


def test_ratio_validation():
    with pytest.raises(UsageError, match=r"--ratio must be in \[0, 1\)"):
        PruneOptions(ratio=1.0)
