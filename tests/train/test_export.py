import json

from eaq.train.export import MANIFEST, ancestry, load_manifest, read_manifest, update_manifest


def entry(model: str, digest: str, init: str | None = None, teacher: str | None = None) -> dict:
    """A manifest entry as `eaq train` writes it, reduced to the fields the tables use."""
    return {
        "model": model,
        "file": f"{model}.safetensors",
        "sha256": digest,
        "init": {"file": f"{model}.safetensors", "sha256": init} if init else None,
        "teacher": {"model": "cnn", "file": "cnn.safetensors", "sha256": teacher}
        if teacher
        else None,
    }


def test_each_record_is_stored_once_and_replaced_entries_become_earlier(tmp_path):
    update_manifest(tmp_path, entry("cnn", "a"))
    update_manifest(tmp_path, entry("cnn", "b", init="a"))
    # a self-distilled step names one file twice, as init and as teacher
    update_manifest(tmp_path, entry("cnn", "c", init="b", teacher="b"))
    update_manifest(tmp_path, entry("vit", "v", teacher="c"))
    data = load_manifest(tmp_path)
    assert set(data["models"]) == {"cnn", "vit"} and sorted(data["earlier"]) == ["a", "b"]
    assert data["earlier"]["b"] == entry("cnn", "b", init="a")
    assert ancestry(tmp_path / "vit.safetensors", "v").keys() == {"v", "c", "b", "a"}
    assert ancestry(tmp_path / "cnn.safetensors", "b").keys() == {"b", "a"}
    assert ancestry(tmp_path / "cnn.safetensors", "unknown") == {}
    # writing the same entry again changes nothing
    before = (tmp_path / MANIFEST).read_text()
    update_manifest(tmp_path, entry("vit", "v", teacher="c"))
    assert (tmp_path / MANIFEST).read_text() == before


def test_entries_brought_from_another_folder_join_the_earlier_table(tmp_path):
    run, kept = tmp_path / "run", tmp_path / "kept"
    for folder in (run, kept):
        folder.mkdir()
    update_manifest(kept, entry("cnn", "a"))
    update_manifest(run, entry("cnn", "b", init="a"), earlier=ancestry(kept / "x", "a"))
    update_manifest(kept, read_manifest(run)["cnn"], earlier=load_manifest(run)["earlier"])
    assert load_manifest(kept) == load_manifest(run)
    assert load_manifest(kept)["earlier"] == {"a": entry("cnn", "a")}


def test_a_manifest_with_nested_entries_is_read_into_the_two_tables(tmp_path):
    first = entry("cnn", "a")
    second = entry("cnn", "b", init="a", teacher="a")
    for key in ("init", "teacher"):  # the layout before the tables: entries nested
        second[key]["manifest"] = first
    third = entry("cnn", "c", init="b")
    third["init"]["manifest"] = second
    (tmp_path / MANIFEST).write_text(json.dumps({"cnn": third}))
    data = load_manifest(tmp_path)
    assert data["models"] == {"cnn": entry("cnn", "c", init="b")}
    assert data["earlier"] == {"a": first, "b": entry("cnn", "b", init="a", teacher="a")}
    assert load_manifest(tmp_path / "none") == {"models": {}, "earlier": {}}
