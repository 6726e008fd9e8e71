"""One source of option semantics: every ``prune`` flag maps onto PruneOptions, the API
accepts what the CLI accepts and rejects what it rejects, with the same message."""

from pathlib import Path

import numpy as np
import pytest

from graphprune.cli import _parser, main, prune_options
from graphprune.errors import UsageError
from graphprune.options import OPTIONS, PruneOptions
from graphprune.plan import Plan
from graphprune.prune import build_pipeline, prune_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CALIB = str(ROOT / "models" / "digits" / "digits_calib.npz")
TEST = str(ROOT / "models" / "digits" / "digits_test.npz")

#: flag -> (a value it accepts, a value it rejects or None, extra flags both need)
CASES = {
    "--ratio": ("0.3", "1.5", ()),
    "--heads": ("0.25", "-0.1", ()),
    "--mlp": ("0.25", "abc", ()),
    "--channels": ("0.25", "1", ()),
    "--recurrent": ("0.5", "2", ()),
    "--hidden": ("0.25", "nan", ()),
    "--drop-layers": ("0", "-1", ()),
    "--drop-layers-list": ("0,2", "a,b", ()),
    "--gqa": ("query", "foo", ()),
    "--criterion": ("wanda", "l3", ("--calib", CALIB)),
    "--reconstruct": ("lsq", "magic", ("--calib", CALIB)),
    "--damping": ("0.001", "-1", ()),
    "--target-macs": ("0.5", "0", ()),
    "--target-params": ("0.6", "1.5", ()),
    "--target-speedup": ("2", "0.5", ()),
    "--target-latency": ("1.5", "-3", ()),
    "--global": (None, None, ()),
    "--allocate": ("global", "sometimes", ()),
    "--round-to": ("8", "0", ()),
    "--min-keep": ("2", "1.5", ()),
    "--exclude": ("conv1*", None, ()),
    "--seed": ("3", "-1", ()),
    "--calib": (CALIB, "", ()),
    "--eval": (TEST, "", ()),
    "--min-quality": ("0.9", "1.5", ("--eval", TEST)),
    "--input-shape": ("input=1x1x8x8", "input=1x0x8", ()),
    "--plan": ("plan.json", "", ()),
    "--no-parity": (None, None, ()),
    "--bench": (None, None, ()),
    "--threads": ("1,2", "0", ()),
    "--optimize": (None, None, ()),
    "--quantize": ("dynamic", "int3", ()),
    "--emit": ("ort", "tflite", ()),
    "--ray": ("local", "cluster", ()),
}
#: flags of ``prune`` that are not options of the prune itself (paths of its outputs)
OUTPUT_FLAGS = {"-h", "--help", "-o", "--output", "--json", "--save-plan", "--config", "--dry-run"}
#: how much the summary prints, not what the prune does
OUTPUT_FLAGS |= {"-q", "--quiet", "-v", "--verbose"}


def _prune_flags() -> set[str]:
    sub = next(a for a in _parser()._actions if a.dest == "cmd")
    return {f for a in sub.choices["prune"]._actions for f in a.option_strings} - OUTPUT_FLAGS


def _cli_options(*flags) -> PruneOptions:
    args = _parser().parse_args(["prune", str(DIGITS), "-o", "x.onnx", *flags])
    return prune_options(args)


def _api_kwargs(flag, value, extra) -> dict:
    opt = next(o for o in OPTIONS if o.flag == flag)
    kw = {}
    if extra:
        kw[extra[0].lstrip("-")] = extra[1]
    if opt.action == "store_true":
        kw[opt.name] = True
    elif opt.action == "store_false":
        kw[opt.name] = False
    elif opt.action == "append":
        kw[opt.name] = (value,)
    else:
        kw[opt.name] = value
    return kw


def test_every_flag_is_covered():
    assert _prune_flags() == set(CASES), "add the new flag to CASES"
    assert {o.flag for o in OPTIONS} == set(CASES)


def test_defaults_are_the_same():
    assert _cli_options() == PruneOptions()
    assert PruneOptions().base_ratio == 0.5
    assert PruneOptions(heads=0.5).base_ratio == 0.0  # a kind ratio given: others stay


@pytest.mark.parametrize("flag", sorted(CASES))
def test_api_accepts_what_the_cli_accepts(flag):
    good, _, extra = CASES[flag]
    given = [flag] if good is None else [flag, good]
    assert _cli_options(*given, *extra) == PruneOptions(**_api_kwargs(flag, good, extra))


@pytest.mark.parametrize("flag", sorted(f for f, c in CASES.items() if c[1] is not None))
def test_api_rejects_what_the_cli_rejects(flag, tmp_path, capsys):
    _, bad, extra = CASES[flag]
    with pytest.raises(UsageError) as api:
        PruneOptions(**_api_kwargs(flag, bad, extra))
    out = tmp_path / "x.onnx"
    assert main(["prune", str(DIGITS), "-o", str(out), flag, bad, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"graphprune: error: {api.value}"
    assert flag in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (("--target-macs", "0.5", "--target-params", "0.5"), "not several"),
        (("--target-speedup", "2", "--target-macs", "0.5"), "not several"),
        (("--quantize", "static"), "needs calibration"),
        (("--drop-layers", "1", "--drop-layers-list", "0"), "not both"),
        (("--reconstruct", "lsq"), "--reconstruct lsq needs calibration data"),
        (("--criterion", "flap"), "--criterion flap needs calibration data"),
    ],
)
def test_combinations_are_checked_once(flags, message, tmp_path, capsys):
    with pytest.raises(UsageError, match=message):
        _cli_options(*flags)
    assert main(["prune", str(DIGITS), "-o", str(tmp_path / "x.onnx"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_replayed_plan_needs_no_data_for_its_criterion(tmp_path):
    plan = prune_model(DIGITS, PruneOptions(criterion="flap", calib=CALIB)).plan
    plan.save(tmp_path / "p.json")
    opts = PruneOptions(criterion="flap", plan=tmp_path / "p.json")
    result = prune_model(DIGITS, opts)
    assert result.plan.groups == plan.groups and result.parity.status == "exact"


def test_api_takes_paths_and_arrays_for_data():
    by_path = prune_model(DIGITS, PruneOptions(criterion="wanda", calib=CALIB, eval=TEST))
    with np.load(CALIB) as c, np.load(TEST) as t:
        calib, test = {k: c[k] for k in c.files}, {k: t[k] for k in t.files}
    by_array = prune_model(DIGITS, PruneOptions(criterion="wanda", calib=calib, eval=test))
    assert by_path.plan.groups == by_array.plan.groups
    assert by_path.evaluation["accuracy"]["before"] > 0.9
    assert by_path.evaluation["accuracy"] == {**by_array.evaluation["accuracy"], "data": TEST}
    assert by_path.parity.status == "exact" and by_path.parity.n_inputs > 3  # calib joins


def test_pipeline_follows_the_options():
    names = [p.name for p in build_pipeline(PruneOptions())]
    assert names == [
        "removal",
        "mask-reference",
        "refold-counts",
        "slice-constants",
        "drop-blocks",
        "export",
        "parity",
    ]
    names = [
        p.name for p in build_pipeline(PruneOptions(reconstruct="lsq", calib=CALIB, parity=False))
    ]
    assert names[:2] == ["removal", "fit-lsq"] and "mask-reference" not in names
    assert names[-3:] == ["reconstruct-lsq", "export", "parity"]


def test_plan_object_and_path_replay_alike(tmp_path):
    plan = prune_model(DIGITS, PruneOptions(ratio=0.25)).plan
    plan.save(tmp_path / "p.json")
    a = prune_model(DIGITS, PruneOptions(plan=Plan.load(tmp_path / "p.json")))
    b = prune_model(DIGITS, plan=tmp_path / "p.json")
    assert a.plan.groups == b.plan.groups == plan.groups


def test_readme_and_help_come_from_the_registries():
    from graphprune.criteria import CRITERIA
    from graphprune.docs import render
    from graphprune.passes.reconstructions import RECONSTRUCTIONS

    readme = (ROOT / "README.md").read_text()
    assert render(readme) == readme, "run: python -m graphprune.docs README.md"
    sub = next(a for a in _parser()._actions if a.dest == "cmd")
    help_text = sub.choices["prune"].format_help()
    for registry in (CRITERIA, RECONSTRUCTIONS):
        for name, entry in registry.items():
            assert entry.help and "\n" not in entry.help
            assert entry.needs <= {"moments", "gram", "outputs"}
            assert f"  {name} " in help_text and name in readme


@pytest.mark.parametrize(
    "criterion,reconstruct,captured",
    [
        ("l2", "none", None),  # nothing data-driven: no calibration pass at all
        ("wanda", "none", "moments"),
        ("obs", "none", "gram"),
        ("l2", "bias", "moments"),
        ("l2", "lsq", "gram"),
        ("l2", "lsq-seq", None),  # captures its own joint statistics, wave by wave
    ],
)
def test_a_run_captures_only_what_it_uses(criterion, reconstruct, captured, monkeypatch):
    import graphprune.calibration as calibration

    calls = []
    real = calibration.capture

    def spy(model, feeds, targets, gram=False):
        calls.append("gram" if gram else "moments")
        return real(model, feeds, targets, gram=gram)

    monkeypatch.setattr(calibration, "capture", spy)
    opts = PruneOptions(ratio=0.25, criterion=criterion, reconstruct=reconstruct, calib=CALIB)
    prune_model(DIGITS, opts)
    assert calls == ([] if captured is None else [captured])


def test_an_unknown_kind_in_ratios_is_refused():
    with pytest.raises(UsageError, match="no group kind 'heads'; kinds are head, neuron"):
        PruneOptions(ratios={"heads": 0.5})


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"parity": "maybe"}, "--no-parity takes true or false"),
        ({"global_rank": "sometimes"}, "--global takes true or false"),
        ({"drop_list": 3}, "--drop-layers-list takes block indices"),
        ({"plan": 3}, "--plan takes a path or a Plan"),
        ({"parity_feeds": [1, 2]}, "parity_feeds takes a list of feed dicts"),
    ],
)
def test_api_values_of_the_wrong_type_are_usage_errors(kw, needle):
    with pytest.raises(UsageError, match=needle):
        PruneOptions(**kw)


def test_spelled_booleans_mean_what_they_say():
    assert PruneOptions(parity="false").parity is False
    assert PruneOptions(global_rank="yes").global_rank is True
