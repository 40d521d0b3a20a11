"""Config: precedence, validation errors naming the dotted key, round-trips."""

from __future__ import annotations

import pytest
import yaml

from cobra import config
from cobra.errors import ConfigError


def test_precedence_defaults_file_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"loss": {"tau": 0.2, "k_sap_pos": 7}, "train": {"epochs": 3}}))
    cfg = config.load_config(path, ["loss.tau=0.05", "model.branches=cnn"])
    assert cfg.loss.tau == 0.05  # override beats file
    assert cfg.loss.k_sap_pos == 7  # file beats default
    assert cfg.train.epochs == 3
    assert cfg.model.branches == "cnn"
    assert cfg.loss.k_cap_neg == config.LossConfig().k_cap_neg  # untouched default


def test_paper_knobs_have_the_documented_dotted_names():
    keys = set(config.dotted_keys())
    documented = {
        "loss.k_sap_pos", "loss.k_sap_neg", "loss.k_cap_pos", "loss.k_cap_neg",
        "loss.lambda_cam", "loss.lambda_proj", "loss.tau", "loss.cam_start_epoch",
        "model.embed_dim", "model.cnn", "model.vit", "model.branches", "model.pretrained",
        "data.dataset", "data.root", "data.image_size", "train.epochs", "train.batch_size",
        "train.lr", "train.seed", "seeds.fusion", "seeds.scales",
    }
    assert documented <= keys


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("loss.k_sap_pos_=3", "unknown config key 'loss.k_sap_pos_'; did you mean 'loss.k_sap_pos'"),
        ("los.tau=0.1", "unknown config key 'los.tau'"),
        ("loss.k_sap_pos=abc", "'loss.k_sap_pos' must be an integer"),
        ("loss.k_sap_pos=2.5", "'loss.k_sap_pos' must be an integer"),
        ("loss.tau=0", "'loss.tau' must be > 0.0"),
        ("loss.k_cap_neg=0", "'loss.k_cap_neg' must be >= 1"),
        ("model.branches=cn", "did you mean 'cnn'"),
        ("seeds.fusion=mean", "'seeds.fusion' must be one of"),
        ("train.progress=maybe", "'train.progress' must be true or false"),
        ("seeds.scales=[1.0, -0.5]", "'seeds.scales' must be positive"),
        ("data.resize_long=[400, 300]", "'data.resize_long' must be [lo, hi]"),
        ("loss", "is not key=value"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        config.load_config(None, [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_in_file_is_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  embed_dimm: 128\n")
    with pytest.raises(ConfigError, match="did you mean 'model.embed_dim'"):
        config.load_config(path)


def test_section_must_be_a_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: 3\n")
    with pytest.raises(ConfigError, match="'loss' must be a mapping"):
        config.load_config(path)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_config(tmp_path / "nope.yaml")


def test_pretrained_accepts_bool_or_path():
    assert config.load_config(None, ["model.pretrained=false"]).model.pretrained is False
    assert config.load_config(None, ["model.pretrained=/w/r18.pth"]).model.pretrained == "/w/r18.pth"


def test_int_is_accepted_for_float_but_not_bool():
    assert config.load_config(None, ["loss.tau=1"]).loss.tau == 1.0
    with pytest.raises(ConfigError):
        config.load_config(None, ["loss.tau=true"])


def test_round_trip_through_yaml_and_flatten(tmp_path):
    cfg = config.load_config(None, ["loss.k_sap_neg=9", "seeds.scales=[1.0, 2.0]"])
    path = tmp_path / "saved.yaml"
    config.save_config(cfg, path)
    again = config.load_config(path)
    assert again == cfg
    flat = config.flatten(cfg)
    assert flat["loss.k_sap_neg"] == 9
    assert set(flat) == set(config.dotted_keys())
    assert config.from_dict(config.unflatten(flat)) == cfg


def test_with_overrides_validates():
    cfg = config.Config()
    assert config.with_overrides(cfg, {"loss.tau": 0.3}).loss.tau == 0.3
    assert cfg.loss.tau == config.LossConfig().tau  # original untouched
    with pytest.raises(ConfigError, match="did you mean 'loss.lambda_cam'"):
        config.with_overrides(cfg, {"loss.lambda_camm": 1.0})


def test_fidelity_switches_are_valid_keys_with_both_behaviours_as_choices():
    import dataclasses

    for key, behaviours in config.FIDELITY_SWITCHES.items():
        section, name = key.rsplit(".", 1)  # a switch may sit in a sub-config (masks.walk)
        f = {x.name: x for x in dataclasses.fields(config.lookup(config.Config(), section))}[name]
        assert f.default is None, key  # unset, so loss.fidelity decides
        assert set(behaviours) <= set(f.metadata["choices"]), key
        assert behaviours[0] != behaviours[1], key


def test_fidelity_code_selects_every_code_behaviour_unless_a_switch_is_set():
    paper = config.load_config(None, [])
    code = config.load_config(None, ["loss.fidelity=code"])
    for key, (paper_value, code_value) in config.FIDELITY_SWITCHES.items():
        assert config.switch(paper, key) == paper_value, key
        assert config.switch(code, key) == code_value, key
        chosen = config.load_config(None, ["loss.fidelity=code", f"{key}={paper_value}"])
        assert config.switch(chosen, key) == paper_value, key
    # resolved when read, so a sweep that changes loss.fidelity changes every unset switch
    swept = config.with_overrides(paper, {"loss.fidelity": "code"})
    for key, (_, code_value) in config.FIDELITY_SWITCHES.items():
        assert config.switch(swept, key) == code_value, key
        with pytest.raises(ConfigError, match=f"'{key}' must be one of"):
            config.load_config(None, [f"{key}=nonsense"])


def test_config_list_names_the_papers_and_the_codes_behaviour(capsys):
    from cobra.cli import main

    assert main(["config", "--list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for key, (paper_value, code_value) in config.FIDELITY_SWITCHES.items():
        assert f"paper → {paper_value}, code → {code_value}" in rows[key], key


def test_switches_without_a_paper_reading_name_the_authors_behaviour():
    rows = {key: text for key, _, text in config.describe()}
    for key in ("model.freeze_bn", "model.detach_stage2", "model.vit_cam_bias",
                "masks.walk.boundary_damp", "masks.irn.layout"):
        assert "authors" in rows[key] or "both codebases" in rows[key], key


def test_exponent_without_a_dot_is_a_number_not_a_string():
    # YAML 1.1 reads 1e-4 as text; `--set train.lr=1e-4` must still mean 0.0001
    cfg = config.load_config(None, ["train.lr=1e-4", "loss.lambda_sap=2E-2", "pretrain.lr=3e-3"])
    assert (cfg.train.lr, cfg.loss.lambda_sap, cfg.pretrain.lr) == (1e-4, 2e-2, 3e-3)
    for bad in ("train.lr=fast", "train.lr=nan", "train.lr=1e400"):
        with pytest.raises(ConfigError, match="train.lr"):
            config.load_config(None, [bad])


def test_an_old_flat_masks_key_names_its_new_nested_key(tmp_path, capsys):
    from cobra.cli import main

    assert main(["config", "--set", "masks.irn_epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'masks.irn.epochs'" in err, err
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"masks": {"rw_beta": 5.0}}))
    with pytest.raises(ConfigError, match="'masks.rw_beta' is now 'masks.walk.beta'"):
        config.load_config(path)
    # every renamed key leads to a key that exists, and no old key is still a key
    keys = set(config.dotted_keys())
    assert set(config.RENAMED_KEYS.values()) <= keys
    assert not set(config.RENAMED_KEYS) & keys


def test_nested_mask_settings_load_from_overrides_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"masks": {"irn": {"epochs": 2}, "rule": {"crf": {
        "enabled": False}}}}))
    cfg = config.load_config(path, ["masks.walk.beta=5", "masks.ir_labels.crf.iters=3"])
    assert (cfg.masks.irn.epochs, cfg.masks.rule.crf.enabled) == (2, False)
    assert (cfg.masks.walk.beta, cfg.masks.ir_labels.crf.iters) == (5.0, 3)
    assert cfg.masks.irn.lr == config.BoundaryNetConfig().lr  # untouched default
    with pytest.raises(ConfigError, match="did you mean 'masks.walk.beta'"):
        config.load_config(None, ["masks.walk.betta=5"])
    with pytest.raises(ConfigError, match="'masks.irn.epochs' must be >= 1"):
        config.load_config(None, ["masks.irn.epochs=0"])


def test_resolved_settings_give_unset_switches_the_behaviour_they_select():
    paper = config.load_config(None, [])
    code = config.load_config(None, ["loss.fidelity=code"])
    assert config.resolved(paper, "masks.walk")["masks.walk.source"] == "fuse"
    assert config.resolved(code, "masks.walk")["masks.walk.source"] == "tran"
    # a switch set to what fidelity picks anyway is the same settings
    same = config.load_config(None, ["masks.rule.name=irn"])
    assert config.resolved(same, "masks.rule") == config.resolved(paper, "masks.rule")
    assert set(config.resolved(paper, "masks.ir_labels")) == {
        k for k in config.dotted_keys() if k.startswith("masks.ir_labels.")}


def test_a_config_saved_with_flat_masks_keys_still_loads(tmp_path):
    """A run directory or checkpoint made before masks was nested keeps working: its saved
    config's flat keys are moved to their new places (only saved configs: see above)."""
    from cobra.checkpoint import checkpoint_config

    values = {old: config.lookup(config.Config(), new) for old, new in config.RENAMED_KEYS.items()}
    values["masks.rw_beta"], values["masks.mask_crf"] = 5.0, False
    old = config.to_dict(config.Config())
    old["masks"] = {"workers": 3, **{k.split(".", 1)[1]: v for k, v in values.items()}}
    cfg = config.from_dict(config.upgrade_saved(old))
    assert (cfg.masks.walk.beta, cfg.masks.rule.crf.enabled, cfg.masks.workers) == (5.0, False, 3)
    assert config.flatten(cfg) == config.flatten(config.with_overrides(config.Config(), {
        "masks.walk.beta": 5.0, "masks.rule.crf.enabled": False, "masks.workers": 3}))
    assert checkpoint_config({"config": old}) == cfg
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert config.load_config(path, saved=True) == cfg
    with pytest.raises(ConfigError, match="is now"):  # the same file given by a user
        config.load_config(path)


def test_crf_sections_share_one_class_and_keep_their_own_defaults():
    # one CRF class: a section set in part keeps its parent's defaults for the rest
    cfg = config.load_config(None, ["masks.rule.crf.enabled=false", "masks.ir_labels.crf.iters=3"])
    rule, ir = cfg.masks.rule.crf, cfg.masks.ir_labels.crf
    assert isinstance(rule, config.CRFConfig) and isinstance(ir, config.CRFConfig)
    assert (rule.gauss_sxy, rule.bilateral_sxy, rule.bilateral_compat) == (2.0, 45.0, 4.0)
    assert (ir.gauss_sxy, ir.bilateral_sxy, ir.bilateral_compat) == (3.0, 50.0, 10.0)
    assert not rule.enabled and ir.iters == 3


@pytest.mark.parametrize("rates", ["[]", "[2,4]", "[0,2,4]", "[2,4,6,8]"])
def test_atrous_rates_must_be_three_positive_rates(rates):
    with pytest.raises(ConfigError, match="segment.atrous_rates"):
        config.load_config(None, [f"segment.atrous_rates={rates}"])
