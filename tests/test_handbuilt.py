"""One hand-built graph per op family (the ones exporters rarely emit): the channel dim
flowing through the op is prunable and prunes exactly; unmappable cases freeze with a reason."""

import pytest

from graphprune.prune import analyze_model
from models.handbuilt import HANDBUILT, MUST_FREEZE
from pruning_checks import prune_and_check

PRUNABLE = sorted(set(HANDBUILT) - MUST_FREEZE)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", PRUNABLE)
def test_op_family_prunes_exactly(name, ratio):
    result = prune_and_check(HANDBUILT[name](), ratio)
    for g in result.analysis.frozen:
        assert set(g.frozen_reasons) <= {"graph input", "graph output"}, g.frozen_reasons


@pytest.mark.parametrize("name", sorted(MUST_FREEZE))
def test_unmapped_channel_axis_freezes_with_reason(name):
    analysis = analyze_model(HANDBUILT[name]())
    inner = [g for g in analysis.frozen if "axis not mapped" in " ".join(g.frozen_reasons)]
    assert inner, [g.frozen_reasons for g in analysis.frozen]
