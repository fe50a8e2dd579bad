"""One catalog: what `export --method` bakes, how `eval pck --method` reads out and what
`cleandift-deploy methods` prints are each method's own catalog entry, not copies of it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cleandift_deploy.cli import main
from cleandift_deploy.eval.protocol import MethodOptions
from cleandift_deploy.export.recipes import Recipe
from cleandift_deploy.methods import registry
from cleandift_deploy.methods.catalog import CATALOG, PRESETS, RECIPES, as_records, table_rows


class Captured(Exception):
    """Stops a command once it has handed over what it would run."""


def _export_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Any:
    """The ExportOptions `export ARGS` hands to the exporter (nothing is exported)."""
    seen: dict[str, Any] = {}

    def capture(loaded: object, out: Path, options: object, spec: object = None) -> None:
        seen["options"] = options
        raise Captured

    loaded = SimpleNamespace(arch="tiny")
    monkeypatch.setattr("cleandift_deploy.models.loading.resolve_source", lambda *a, **k: loaded)
    monkeypatch.setattr("cleandift_deploy.export.exporter.export_onnx", capture)
    with pytest.raises(Captured):
        main(["export", "--arch", "tiny", "--random-init", "-o", str(tmp_path / "x.onnx"), *args])
    return seen["options"]


def _baked(options: Any) -> Recipe:
    """The recipe fields as the exporter received them."""
    noise = options.noise
    return Recipe(
        taps=options.taps,
        noise_timestep=None if noise is None else noise.timestep,
        ensemble=1 if noise is None else noise.ensemble,
        latent="mean" if noise is None else noise.latent,
        seed=0 if noise is None else noise.seed,
        freeu=options.freeu is not None,
        image_size=options.image_size[0],
        prompt=options.prompt,
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_export_bakes_the_catalog_entry(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = CATALOG[name]
    assert RECIPES[name] is entry.export
    options = _export_options(monkeypatch, tmp_path, "--method", name)
    expected = entry.export
    assert expected is not None
    found = _baked(options)
    assert options.method == name  # recorded in the manifest's build record
    if expected.noise_timestep is None:  # clean features: no noise, so nothing else applies
        assert found.noise_timestep is None
        found = Recipe(found.taps, None, image_size=found.image_size, prompt=found.prompt)
        expected = Recipe(expected.taps, None, image_size=expected.image_size)
    assert found == expected


def test_old_recipe_spelling_notes_the_new_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _export_options(monkeypatch, tmp_path, "--recipe", "geoaware")
    assert "--recipe is now --method: use --method geoaware" in capsys.readouterr().err
    new = _export_options(monkeypatch, tmp_path, "--method", "geoaware")
    assert old == new


@pytest.mark.parametrize("name", list(CATALOG))
def test_eval_reads_out_with_the_catalog_entry(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = CATALOG[name]
    seen: list[MethodOptions] = []
    monkeypatch.setitem(registry.METHODS, entry.evaluation, seen.append)
    registry.build_method(name, MethodOptions())
    (options,) = seen
    if entry.descriptor is None:
        assert options.descriptor is None
    else:
        assert PRESETS[name] is entry.descriptor
        assert options.descriptor == entry.descriptor.name
        from cleandift_deploy.methods.catalog import get_preset

        assert get_preset(options.descriptor) is entry.descriptor


@pytest.mark.parametrize(
    ("args", "notice"),
    [
        (["--method", "geoaware"], None),
        (["--descriptor", "geoaware"], "--descriptor is now --method"),
        (["--method", "descriptor", "--descriptor", "geoaware"], "--descriptor is now --method"),
    ],
)
def test_eval_pck_method_and_old_spellings(
    args: list[str],
    notice: str | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[MethodOptions] = []

    def capture(options: MethodOptions) -> None:
        seen.append(options)
        raise Captured

    monkeypatch.setattr("cleandift_deploy.cli.eval_pck.load_pairs", lambda *a: [])
    monkeypatch.setitem(registry.METHODS, "descriptor", capture)
    with pytest.raises(Captured):
        main(["eval", "pck", "--data", str(tmp_path), "--dataset", "spair",
              "--out", str(tmp_path / "o"), *args])  # fmt: skip
    assert seen[0].descriptor == "geoaware"
    err = capsys.readouterr().err
    assert (notice in err) if notice else "note:" not in err


@pytest.mark.parametrize("verb", [["eval", "pck", "--dataset", "spair"], ["export"]])
def test_an_unknown_method_is_refused_before_any_file_is_read(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--data", str(missing), "--method", "nope", "-o", str(tmp_path / "o")]
             if verb[0] == "eval" else
             [*verb, str(missing), "--method", "nope", "-o", str(tmp_path / "o")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'nope': choose one of cleandift, dift")
    assert err.count("\n") == 1


def _json(value: object) -> object:
    return json.loads(json.dumps(value))


def test_methods_prints_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    main(["methods", "--json"])
    records = json.loads(capsys.readouterr().out)
    assert records == _json(as_records())
    for record, entry in zip(records, CATALOG.values(), strict=True):
        assert record["name"] == entry.name
        assert record["export"] == _json(None if entry.export is None else asdict(entry.export))
        preset = entry.descriptor
        assert record["descriptor"] == _json(None if preset is None else asdict(preset))
        assert record["paper"]["spair_pck01"] == entry.paper.spair_pck01
    main(["methods"])
    table = capsys.readouterr().out
    for row in table_rows():
        assert row[0][:6] in table and row[-1].split()[0][:4] in table
