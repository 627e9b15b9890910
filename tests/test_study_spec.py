"""Study files: presets parse, and every bad file is one clear error naming the line and key."""

import json

import pytest

from peftport.study.spec import (
    StudyFileError,
    load_preset,
    load_study,
    parse_study,
    preset_names,
    train_fields,
)

GOOD = """\
name: tiny
techniques:
  lora: {config: {r: 2}}
  adapter: {config: {reduction_factor: 4}}
pairs:
  - [tiny-bert, tiny-bert]
data:
  - [rotten_tomatoes, rotten_tomatoes]
pre_steps: [5, 10]
post_steps: [3, 6]
seeds: [0]
train: {lr: 1e-2, batch_size: 8, max_length: 32, max_eval_examples: 40}
"""


def test_good_file_and_canonical_form():
    spec = parse_study(GOOD, "good.yaml")
    assert [t.name for t in spec.techniques] == ["adapter", "lora"]  # the registry's order
    assert spec.techniques[1].config["r"] == 2 and spec.techniques[1].config["alpha"] == 16
    assert spec.techniques[0].pre["lr"] == 0.01  # "1e-2" is a number, not a string
    assert spec.pairs == (("tiny-bert", "tiny-bert"),)
    assert spec.conditions == ("ported", "sampled", "random")  # the default
    assert spec.pre_steps == (5, 10) and spec.post_steps == (3, 6)
    # the id is a hash of the canonical form: spelling the defaults out changes nothing
    explicit = GOOD.replace("lora: {config: {r: 2}}", "lora: {config: {r: 2, alpha: 16}}")
    assert parse_study(explicit, "x.yaml").id == spec.id
    assert parse_study(GOOD.replace("seeds: [0]", "seeds: [1]"), "x.yaml").id != spec.id


def test_presets_parse():
    assert {"quick", "paper"} <= set(preset_names())
    quick, paper = load_preset("quick"), load_preset("paper")
    assert set(quick.pairs) == {("minilm-l6", "minilm-l6-tuned"), ("minilm-l6-tuned", "minilm-l6")}
    assert len(quick.techniques) == 4 and 2 <= len(quick.seeds) <= 3
    assert {t.name for t in paper.techniques} == {"adapter", "lora", "prefix", "compacter"}
    assert len(paper.pairs) == 4 and paper.pre_steps == (2500, 5000)
    assert paper.post_steps == (500, 1500, 3000) and len(paper.seeds) == 3


def test_quick_preset_is_offline():
    from peftport.assets import HubSnapshot
    from peftport.data import get_dataset
    from peftport.hosts import get_host

    quick = load_preset("quick")
    assert all(get_dataset(d).offline_available for d in quick.datasets)
    for h in quick.hosts:
        spec = get_host(h)
        assert any(not isinstance(s, HubSnapshot) for s in spec.sources)


def test_toml_and_relative_paths(tmp_path):
    # a data file is read at plan time: enough rows for every split
    (tmp_path / "toy.csv").write_text(
        "text,label\n" + "".join(f"film number {i},{i % 2}\n" for i in range(40))
    )
    (tmp_path / "s.toml").write_text(
        'techniques = ["lora"]\npairs = [["tiny-bert", "tiny-bert"]]\n'
        'data = [["toy.csv", "toy.csv"]]\npre_steps = [4]\npost_steps = [0, 2]\nseeds = [0]\n'
        "[train]\nlr = 1e-2\n"
    )
    spec = load_study(tmp_path / "s.toml")
    assert spec.name == "s"
    assert spec.data == ((str((tmp_path / "toy.csv").resolve()),) * 2,)
    assert spec.post_steps == (2,)  # zero-shot is always evaluated; 0 is not a run


# (what to change in GOOD, the line the error must name, words the message must contain)
BAD = [
    pytest.param(
        "name: tiny",
        "name: tiny\ntechnique: [lora]",
        2,
        ["unknown key 'technique'", "Did you mean 'techniques'"],
        id="unknown-axis",
    ),
    pytest.param(
        "lora: {config: {r: 2}}",
        "lorax: {config: {r: 2}}",
        3,
        ["techniques.lorax", "unknown technique 'lorax'", "Did you mean 'lora'"],
        id="unknown-technique",
    ),
    pytest.param(
        "- [tiny-bert, tiny-bert]",
        "- [tiny-bert, tiny-bertt]",
        6,
        ["pairs[0][1]", "unknown host 'tiny-bertt'"],
        id="unknown-host",
    ),
    pytest.param(
        "- [rotten_tomatoes, rotten_tomatoes]",
        "- [rotten_tomatos, rotten_tomatoes]",
        8,
        ["data[0][0]", "unknown data set 'rotten_tomatos'"],
        id="unknown-data-set",
    ),
    pytest.param(
        "- [tiny-bert, tiny-bert]",
        "- [tiny-bert, tiny-t5]",
        6,
        ["pairs[0]", "cannot port tiny-bert -> tiny-t5", "family"],
        id="pair-families",
    ),
    pytest.param(
        "pre_steps: [5, 10]",
        "pre_steps: [5, -10]",
        9,
        ["pre_steps[1]", "must be >= 1, got -10"],
        id="negative-pre-steps",
    ),
    pytest.param(
        "post_steps: [3, 6]",
        "post_steps: [-3, 6]",
        10,
        ["post_steps[0]", "must be >= 0, got -3"],
        id="negative-post-steps",
    ),
    pytest.param(
        "post_steps: [3, 6]",
        "post_steps: [3, 3]",
        10,
        ["post_steps[1]", "listed twice"],
        id="duplicate-step",
    ),
    pytest.param(
        "lora: {config: {r: 2}}",
        "lora: {config: {r: 0}}",
        3,
        ["techniques.lora.config", "r must be >= 1"],
        id="technique-config",
    ),
    pytest.param(
        "lora: {config: {r: 2}}",
        "lora: {r: 2}",
        3,
        ["techniques.lora.r", "go under 'config'"],
        id="technique-key",
    ),
    pytest.param(
        "train: {lr: 1e-2,",
        "train: {learning_rate: 1e-2,",
        12,
        ["train.learning_rate", "Did you mean 'lr'"],
        id="train-key",
    ),
    pytest.param(
        "train: {lr: 1e-2,",
        "train: {steps: 5, lr: 1e-2,",
        12,
        ["train.steps", "pre_steps / post_steps"],
        id="planner-field",
    ),
    pytest.param(
        "train: {lr: 1e-2,",
        "train: {lr: fast,",
        12,
        ["train.lr", "must be a number"],
        id="train-type",
    ),
    pytest.param(
        "train: {lr: 1e-2,",
        "train: {lr: -1,",
        12,
        ["train.lr", "lr must be positive"],
        id="train-range",
    ),
    pytest.param(
        "seeds: [0]",
        "seeds: [0]\npre: {horizon: 7}",
        12,
        ["pre.horizon", "shorter than the longest step count (10)"],
        id="horizon",
    ),
    pytest.param(
        "seeds: [0]",
        "seeds: [0]\nconditions: [ported, copied]",
        12,
        ["conditions[1]", "unknown condition 'copied'"],
        id="condition",
    ),
    pytest.param(
        "seeds: [0]",
        "seeds: [0]\nseeds: [1]",
        12,
        ["given twice (lines 11 and 12)"],
        id="duplicate-key",
    ),
    pytest.param(
        "- [tiny-bert, tiny-bert]",
        "- [tiny-t5, tiny-t5]",
        4,
        ["techniques.adapter", "t5"],
        id="technique-unsupported-on-host-kind",
    ),
]


@pytest.mark.parametrize(("old", "new", "line", "words"), BAD)
def test_bad_study_file(old, new, line, words):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    if "tiny-t5" in new and "tiny-bert" not in new:
        # prompt tuning is the technique T5 refuses; swap it in for this case
        text = text.replace("adapter: {config: {reduction_factor: 4}}", "prompt: {}")
        words = ["techniques.prompt", "not supported on text-to-text"]
    with pytest.raises(StudyFileError) as e:
        parse_study(text, "s.yaml")
    msg = str(e.value)
    assert f"s.yaml, line {line}" in msg, msg
    for w in words:
        assert w in msg, msg


def test_every_problem_reported_at_once():
    text = GOOD.replace("lora:", "lorax:").replace("[5, 10]", "[5, -1]")
    with pytest.raises(StudyFileError, match="2 problems") as e:
        parse_study(text, "s.yaml")
    assert "line 3" in str(e.value) and "line 9" in str(e.value)


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(StudyFileError, match=r"s.yaml, line 3: not valid YAML"):
        parse_study("techniques: [lora]\npairs: [[a, b]\ndata: x\n", "s.yaml")


def test_toml_error_names_the_line(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'techniques = ["lora"]\npairs = [["tiny-bert", "tiny-bert"]]\n'
        'data = [["rotten_tomatoes", "rotten_tomatoes"]]\npre_steps = [4]\n'
        "post_steps = [2]\nseeds = [0]\n[train]\nlearning_rate = 0.01\n"
    )
    with pytest.raises(StudyFileError, match=r"s.toml, line 8, key 'train.learning_rate'"):
        load_study(p)


def test_shapes_that_cannot_port(tmp_path):
    """Same family, other width: compared from config.json before anything is loaded."""
    from peftport.hosts import get_host, host_folder

    tiny = host_folder(get_host("tiny-bert"))  # builds the tiny host once (a second)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["hidden_size"] = 32
    other = tmp_path / "wide-bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(cfg))
    text = GOOD.replace("[tiny-bert, tiny-bert]", f"[tiny-bert, {other}]")
    with pytest.raises(
        StudyFileError,
        match=r"line 6.*their shapes differ \(hidden_size 16 vs "
        r"32\)",
    ):
        parse_study(text, "s.yaml")


def test_missing_file_and_suffix(tmp_path):
    with pytest.raises(StudyFileError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(StudyFileError, match=r"\.yaml, \.yml or \.toml"):
        load_study(tmp_path / "s.json")
    with pytest.raises(StudyFileError, match="unknown preset 'quik'. Did you mean 'quick'"):
        load_preset("quik")


def test_train_fields_are_trainconfig_fields():
    """Every TrainConfig field but the planner's may be set, checked from its description."""
    import dataclasses

    from peftport.engine import TrainConfig
    from peftport.study.spec import PLANNER_FIELDS

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert train_fields() == [n for n in names if n not in PLANNER_FIELDS]
    text = GOOD.replace(
        "train: {lr: 1e-2,",
        "train: {warmup_ratio: -0.5, eval_split: dev, weight_decay: 1, lr: 1e-2,",
        1,
    )
    with pytest.raises(StudyFileError) as e:
        parse_study(text, "s.yaml")
    msg = str(e.value)
    assert "2 problems" in msg, msg
    assert "key 'train.warmup_ratio': warmup_ratio must be >= 0, got -0.5" in msg
    assert "key 'train.eval_split': eval_split must be one of train, validation, test" in msg
    spec = parse_study(GOOD.replace("train: {lr: 1e-2,", "train: {weight_decay: 1, lr: 1e-2,"))
    assert spec.techniques[0].pre["weight_decay"] == 1.0  # held as TrainConfig holds it
    assert isinstance(spec.techniques[0].pre["weight_decay"], float)


def test_run_time_shape_check(tmp_path):
    """`study run` compares the resolved hosts' shapes again (hosts not on disk at plan time)."""
    import dataclasses

    from peftport.hosts import get_host, host_folder
    from peftport.study.pairchecks import check_resolved_pairs

    spec = parse_study(GOOD, "s.yaml")
    check_resolved_pairs(spec)  # tiny-bert -> tiny-bert: fine
    cfg = json.loads((host_folder(get_host("tiny-bert")) / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    deeper = tmp_path / "deeper-bert"
    deeper.mkdir()
    (deeper / "config.json").write_text(json.dumps(cfg))
    spec = dataclasses.replace(spec, pairs=(("tiny-bert", str(deeper)),))
    with pytest.raises(StudyFileError, match=r"num_hidden_layers 2 vs 3"):
        check_resolved_pairs(spec)


def test_technique_config_checked_against_host_width():
    """Compacter's bottleneck must be a multiple of phm_dim on each host's width: refused at
    plan time with the line of the technique, not by every unit at run time."""
    from peftport.hosts import get_host, host_folder

    host_folder(get_host("tiny-bert"))  # width 16, on disk so config.json can be read
    text = GOOD.replace(
        "adapter: {config: {reduction_factor: 4}}",
        "compacter: {config: {reduction_factor: 8, phm_dim: 4}}",
    )
    with pytest.raises(
        StudyFileError,
        match=r"line 4.*bottleneck width 2 \(hidden size 16 of "
        r"tiny-bert.*multiples of phm_dim 4",
    ):
        parse_study(text, "s.yaml")
    parse_study(text.replace("reduction_factor: 8", "reduction_factor: 4"), "s.yaml")
