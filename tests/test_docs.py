"""The docs' inventory reference is generated from the models and must match them."""

from __future__ import annotations

from scripts.inventory_doc import DOC, render


def test_inventory_reference_matches_the_models() -> None:
    assert DOC.read_text() == render(), "run: python -m scripts.inventory_doc"


def test_every_inventory_field_is_described() -> None:
    from scripts.inventory_doc import SECTIONS

    missing = [
        f"{title}.{name}"
        for title, model in SECTIONS
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert missing == []
