"""The one template every pass test subclasses (docs/architecture.md: one template per plugin family).

A subclass sets `config` (a valid config dict), `invalid_configs` (dicts the recipe must refuse),
and implements `build_model`, `check_structure` (what was removed/shared/factored) and
`check_numbers` (outputs against the expected math, within a tolerance the subclass justifies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from tiny_models import random_feeds, run

from edgecam.compiler.errors import RecipeError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config, pass_kinds


class PassContract:
    config: ClassVar[dict[str, Any]]
    invalid_configs: ClassVar[list[dict[str, Any]]] = []
    calibration_count: ClassVar[int] = 16

    def build_model(self) -> Any:
        raise NotImplementedError

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        raise NotImplementedError

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        raise NotImplementedError

    # --- shared machinery -------------------------------------------------------------------

    def context(self, model: Any, tmp_path: Path) -> PassContext:
        return PassContext(calibration=random_feeds(model, self.calibration_count, seed=7), work_dir=tmp_path)

    @pytest.fixture
    def applied(self, tmp_path: Path) -> tuple[Any, Any, PassResult]:
        before = self.build_model()
        snapshot = before.SerializeToString()
        result = create_pass(parse_pass_config(self.config)).apply(before, self.context(before, tmp_path))
        assert before.SerializeToString() == snapshot, "the pass mutated its input model"
        return before, result.model, result

    def test_kind_is_registered(self) -> None:
        assert self.config["kind"] in pass_kinds()

    def test_output_is_a_valid_model(self, applied: tuple[Any, Any, PassResult]) -> None:
        import onnx

        _, after, _ = applied
        onnx.checker.check_model(after, full_check=True)

    def test_structure(self, applied: tuple[Any, Any, PassResult]) -> None:
        before, after, result = applied
        self.check_structure(before, after, result)

    def test_numbers(self, applied: tuple[Any, Any, PassResult]) -> None:
        before, after, _ = applied
        self.check_numbers(before, after, random_feeds(before, 4, seed=11))

    def test_changes_are_reported(self, applied: tuple[Any, Any, PassResult]) -> None:
        import json

        _, _, result = applied
        assert result.changes, "a pass must say what it changed"
        json.dumps(result.changes)  # the report stores it as JSON

    def test_invalid_configs_are_refused(self) -> None:
        for bad in self.invalid_configs:
            with pytest.raises((RecipeError, ValueError)) as info:
                parse_pass_config(bad)
            # The error names the offending field (or the kind) so a user can fix the recipe.
            assert any(key in str(info.value) for key in bad if key != "kind") or "kind" in str(info.value)

    @staticmethod
    def outputs(model: Any, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        return [run(model, feed)[0] for feed in feeds]
