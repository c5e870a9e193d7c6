"""Overrides mean what a Lightning/Hydra user expects: arguments of a config's ``_target_`` need no "+",
typos are caught with the closest keys, "+" on an existing key is accepted."""
from __future__ import annotations

import pytest

from kakusan.config_check import check_overrides, group_options
from kakusan.errors import UserError


def test_trainer_arguments_pass_as_plain_overrides_and_reach_the_trainer(make_cfg):
    typed = ["trainer.max_steps=20", "trainer.limit_train_batches=0.1", "trainer.accumulate_grad_batches=4"]
    checked = check_overrides(typed)
    assert checked.error is None and checked.overrides == ["+" + o for o in typed]
    cfg = make_cfg(typed)  # composed as the command line composes it
    assert cfg.trainer.max_steps == 20 and cfg.trainer.limit_train_batches == 0.1
    assert cfg.trainer.accumulate_grad_batches == 4


def test_a_typo_still_fails_with_the_closest_valid_argument():
    error = check_overrides(["trainer.max_step=20"]).error
    assert "'max_step' does not exist under trainer" in error and "Did you mean trainer.max_steps" in error
    error = check_overrides(["model.optimizr.lr=1"]).error
    assert "Did you mean model.optimizer" in error


def test_model_and_network_arguments_too(make_cfg):
    cfg = make_cfg(["model.nonfinite=skip", "model.net.dropout=0.1"])
    assert cfg.model.nonfinite == "skip" and cfg.model.net.dropout == 0.1
    with pytest.raises(UserError, match="Did you mean model.nonfinite"):
        make_cfg(["model.nonfinit=skip"])


def test_plus_on_an_existing_key_sets_it_and_sweeps_keep_their_lists():
    assert check_overrides(["+seed=3"]).overrides == ["++seed=3"]
    assert check_overrides(["trainer.max_steps=10,20", "seed=0,1"], sweep=True).overrides == [
        "+trainer.max_steps=10,20", "seed=0,1"]
    assert "no data config named 'mnsit'" in check_overrides(["data=mnsit,digits"], sweep=True).error


def test_checkpoint_sampler_is_an_option_and_building_blocks_are_not():
    assert "checkpoint" in group_options("sampler") and "ddim" in group_options("sampler")
