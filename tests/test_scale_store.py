"""What makes `certctl serve` restart fast with 10,000 objects: the local store's caches.

A restart reads each manifest file's documents from the parse cache (by the digest
of the file's bytes) and each state file from the state cache a clean stop wrote,
unless the file changed since; what the caches cannot hold exactly is parsed from its
YAML every time. Reads still hand out copies no caller can change the store by.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from certctl.store import interface, local
from certctl.store.local import LocalStore

CONFIG = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "settings", "namespace": "default"}, "data": {"mode": "fast"}}


def store(tmp_path: Path) -> LocalStore:
    return LocalStore(manifests_dir=tmp_path / "manifests", state_dir=tmp_path / "state")


def cache_entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state" / local.MANIFEST_CACHE).glob("*.cache"))


def read_cache(path: Path) -> Any:
    return local.load_cache(path.read_bytes())


def write_cache(path: Path, value: Any) -> None:
    path.write_bytes(local.dump_cache(value))


def test_a_restart_reads_manifest_documents_from_the_parse_cache(tmp_path: Path):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "app.yaml").write_text(yaml.safe_dump(CONFIG))
    first = store(tmp_path)
    first.reload_manifests()
    (entry,) = cache_entries(tmp_path)
    assert read_cache(entry) == [CONFIG]
    # The entry is what a restart reads for these bytes: changed here, it shows.
    write_cache(entry, [{**CONFIG, "data": {"mode": "from the cache"}}])
    second = store(tmp_path)
    second.reload_manifests()
    found = second.get(kind="ConfigMap", namespace="default", name="settings")
    assert found is not None and found["data"] == {"mode": "from the cache"}


def test_an_edited_file_is_parsed_and_its_old_entry_removed(tmp_path: Path):
    (tmp_path / "manifests").mkdir()
    path = tmp_path / "manifests" / "app.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    kept = store(tmp_path)
    kept.reload_manifests()
    (before,) = cache_entries(tmp_path)
    path.write_text(yaml.safe_dump({**CONFIG, "data": {"mode": "edited"}}))
    kept.reload_manifests()
    found = kept.get(kind="ConfigMap", namespace="default", name="settings")
    assert found is not None and found["data"] == {"mode": "edited"}
    # The edit's entry is not written on its way to the data plane: at the stop.
    assert cache_entries(tmp_path) == []
    kept.save_state_cache()
    (after,) = cache_entries(tmp_path)
    assert after != before
    assert read_cache(after) == [{**CONFIG, "data": {"mode": "edited"}}]


SECRET: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
          "metadata": {"name": "site-tls", "namespace": "default"},
          "data": {"tls.crt": "Y2VydGlmaWNhdGUgdmFsdWU=", "tls.key": "a2V5IHZhbHVlIGhlcmU="}}


def test_a_secret_is_cached_by_where_it_lies_in_its_file_never_by_its_values(tmp_path: Path):
    """The state dir holds no copy of a manifest's Secret: its entry says where its values
    lie in the file (which the restart reads anyway), or where the whole Secret does when
    its values are not plain text there (quoted, in a List), and the restart reads them."""
    (tmp_path / "manifests").mkdir()
    quoted = {**SECRET, "metadata": {"name": "quoted", "namespace": "default"}}
    a_list = {"apiVersion": "v1", "kind": "List",
              "items": [{**SECRET, "metadata": {"name": "listed", "namespace": "default"}}]}
    other = {**CONFIG, "metadata": {"name": "other", "namespace": "default"}}
    text = ("# the site\n" + yaml.safe_dump(CONFIG) + "---\n" + yaml.safe_dump(SECRET)
            + "---\n" + yaml.safe_dump(quoted, default_style='"')
            # indented, and in flow style: a span is the document's whole text
            + "---\n  " + yaml.safe_dump(other).replace("\n", "\n  ").rstrip() + "\n"
            + "--- " + json.dumps(a_list) + "\n")
    (tmp_path / "manifests" / "site.yaml").write_text(text)
    first = store(tmp_path)
    first.reload_manifests()
    (entry,) = cache_entries(tmp_path)
    for value in (b"Y2VydGlmaWNhdGUgdmFsdWU=", b"a2V5IHZhbHVlIGhlcmU="):
        assert value not in entry.read_bytes()
    kept = read_cache(entry)
    without_values = {**SECRET, "data": {"tls.crt": None, "tls.key": None}}
    assert kept["documents"] == [CONFIG, without_values, None, other, None]
    assert sorted(kept["spans"]) == ["2", "4"]
    # The restart takes the other documents from the entry (changed here, it shows) and
    # the Secrets' values from the file.
    kept["documents"][0] = {**CONFIG, "data": {"mode": "from the cache"}}
    write_cache(entry, kept)
    second = store(tmp_path)
    second.reload_manifests()
    config = second.get(kind="ConfigMap", namespace="default", name="settings")
    assert config is not None and config["data"] == {"mode": "from the cache"}
    for name in ("site-tls", "quoted", "listed"):
        secret = second.get(kind="Secret", namespace="default", name=name)
        assert secret is not None and secret["data"] == SECRET["data"], name


def test_a_secret_whose_values_are_repeated_elsewhere_in_it_is_parsed_whole(tmp_path: Path):
    # kubectl's last-applied-configuration annotation holds the whole Secret again.
    (tmp_path / "manifests").mkdir()
    applied = {**SECRET, "metadata": {**SECRET["metadata"], "annotations": {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(SECRET)}}}
    (tmp_path / "manifests" / "applied.yaml").write_text(yaml.safe_dump(applied))
    store(tmp_path).reload_manifests()
    (entry,) = cache_entries(tmp_path)
    assert b"a2V5IHZhbHVlIGhlcmU=" not in entry.read_bytes()
    assert read_cache(entry)["documents"] == [None]
    restarted = store(tmp_path)
    restarted.reload_manifests()
    secret = restarted.get(kind="Secret", namespace="default", name="site-tls")
    assert secret is not None and secret["data"] == SECRET["data"]


def test_a_value_json_escapes_is_still_found_repeated_in_the_secret(tmp_path: Path):
    (tmp_path / "manifests").mkdir()
    value = 'pass"word\\x'
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "quoting", "namespace": "default",
                           "annotations": {"note": f"was {value}"}},
              "stringData": {"password": value}}
    # The value plain in the file, so that its span is its text.
    (tmp_path / "manifests" / "q.yaml").write_text(
        yaml.safe_dump({k: v for k, v in secret.items() if k != "stringData"})
        + f"stringData:\n  password: {value}\n")
    store(tmp_path).reload_manifests()
    (entry,) = cache_entries(tmp_path)
    assert read_cache(entry)["documents"] == [None]  # parsed whole at restarts


def test_the_json_caches_of_an_earlier_certctl_are_replaced(tmp_path: Path):
    """Its parse-cache entries were JSON (one held a listed Secret's values: the
    replacement holds none) and its state cache was state-cache.json."""
    (tmp_path / "manifests").mkdir()
    a_list = {"apiVersion": "v1", "kind": "List", "items": [SECRET]}
    data = yaml.safe_dump(a_list).encode()
    (tmp_path / "manifests" / "list.yaml").write_bytes(data)
    folder = tmp_path / "state" / local.MANIFEST_CACHE
    folder.mkdir(parents=True)
    old_entry = folder / f"{hashlib.sha256(data).hexdigest()}.json"
    old_entry.write_text(json.dumps([{**a_list, "items": [{**SECRET, "type": "from json"}]}]))
    old_state_cache = tmp_path / "state" / "state-cache.json"
    old_state_cache.write_text("[]")
    loaded = store(tmp_path)
    loaded.reload_manifests()
    (entry,) = cache_entries(tmp_path)
    assert not old_entry.exists()
    assert b"a2V5IHZhbHVlIGhlcmU=" not in entry.read_bytes()
    secret = loaded.get(kind="Secret", namespace="default", name="site-tls")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    loaded.save_state_cache()
    assert not old_state_cache.exists() and (tmp_path / "state" / local.STATE_CACHE).exists()


def test_a_timestamp_keeps_its_file_out_of_the_cache_and_other_yaml_types_stay(
    tmp_path: Path,
):
    (tmp_path / "manifests").mkdir()
    # An unquoted timestamp is a datetime to YAML, which the cache cannot hold ...
    (tmp_path / "manifests" / "odd.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: odd, namespace: default}\n"
        "data: {when: 2026-01-02T03:04:05Z}\n")
    # ... and integer keys, sets and binary it holds as they are.
    (tmp_path / "manifests" / "keys.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keys, namespace: default}\n"
        "data: {1: one, set: !!set {a: null}, raw: !!binary AAE=}\n")
    for _ in range(2):  # the timestamp's file parsed from the YAML both times
        loaded = store(tmp_path)
        loaded.reload_manifests()
        (entry,) = cache_entries(tmp_path)
        assert read_cache(entry)[0]["metadata"]["name"] == "keys"
        odd = loaded.get(kind="ConfigMap", namespace="default", name="odd")
        keys = loaded.get(kind="ConfigMap", namespace="default", name="keys")
        assert odd is not None and isinstance(odd["data"]["when"], datetime.datetime)
        assert keys is not None and keys["data"] == {1: "one", "set": {"a"}, "raw": b"\0\1"}


def test_state_files_are_read_from_the_state_cache_unless_changed_since(tmp_path: Path):
    first = store(tmp_path)
    for name in ("a", "b"):
        first.create(obj={**CONFIG, "metadata": {"name": name, "namespace": "default"}})
    time.sleep(2.1)  # older than the timestamps' slack: a later write is told apart
    first.save_state_cache()
    cache = tmp_path / "state" / local.STATE_CACHE
    entries: list[list[Any]] = read_cache(cache)
    assert sorted(entry[0] for entry in entries) == [
        "objects/ConfigMap/default/a.yaml", "objects/ConfigMap/default/b.yaml"]
    # Used: a changed entry shows for a file that did not change ...
    for entry in entries:
        entry[2]["data"] = {"mode": "from the cache"}
    write_cache(cache, entries)
    # ... and not for a file written since (a process that crashed before its stop).
    path_b = tmp_path / "state" / "objects" / "ConfigMap" / "default" / "b.yaml"
    changed = yaml.safe_load(path_b.read_text())
    changed["data"] = {"mode": "written since"}
    local.atomic_write(path_b, local.dump_state_file(changed))
    second = store(tmp_path)
    a = second.get(kind="ConfigMap", namespace="default", name="a")
    b = second.get(kind="ConfigMap", namespace="default", name="b")
    assert a is not None and a["data"] == {"mode": "from the cache"}
    assert b is not None and b["data"] == {"mode": "written since"}


def test_a_state_file_written_just_before_the_stop_is_left_out_of_the_cache(tmp_path: Path):
    first = store(tmp_path)
    first.create(obj=CONFIG)
    first.save_state_cache()
    assert read_cache(tmp_path / "state" / local.STATE_CACHE) == []
    assert store(tmp_path).get(kind="ConfigMap", namespace="default",
                               name="settings") is not None


def test_an_unreadable_state_cache_is_ignored(tmp_path: Path):
    first = store(tmp_path)
    first.create(obj=CONFIG)
    cache = tmp_path / "state" / local.STATE_CACHE
    whole = local.dump_cache([["objects/ConfigMap/default/settings.yaml", [0, 0, 0, 0], {}]])
    # another format, another Python's marshal, a truncated file
    for data in (b"[not json", whole.replace(b"Python 3.", b"Python 2."), whole[:-9]):
        cache.write_bytes(data)
        found = store(tmp_path).get(kind="ConfigMap", namespace="default", name="settings")
        assert found is not None and found["data"] == {"mode": "fast"}


def test_a_state_object_with_a_timestamp_is_left_out_of_the_cache_and_the_others_kept(
    tmp_path: Path,
):
    first = store(tmp_path)
    first.create(obj={**CONFIG, "metadata": {"name": "a", "namespace": "default"}})
    first.create(obj={**CONFIG, "metadata": {"name": "b", "namespace": "default"},
                      "data": {"when": datetime.datetime(2026, 1, 2, 3, 4, 5)}})
    time.sleep(2.1)
    first.save_state_cache()
    entries = read_cache(tmp_path / "state" / local.STATE_CACHE)
    assert [entry[0] for entry in entries] == ["objects/ConfigMap/default/a.yaml"]
    b = store(tmp_path).get(kind="ConfigMap", namespace="default", name="b")
    assert b is not None and b["data"] == {"when": datetime.datetime(2026, 1, 2, 3, 4, 5)}


def test_objects_read_from_the_caches_share_equal_strings_but_no_containers(tmp_path: Path):
    """What keeps 10,000 objects small: their repeated values (kinds, namespaces, issuers,
    conditions) are one string each, while each object is still its own to replace."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "two.yaml").write_text(
        config("x", "same") + "---\n" + config("y", "same"))
    first = store(tmp_path)
    first.reload_manifests()
    for name in ("a", "b"):
        first.create(obj={**CONFIG, "metadata": {"name": name, "namespace": "default"},
                          "data": {"mode": "alike"}})
    time.sleep(2.1)
    first.save_state_cache()

    second = store(tmp_path)
    second.reload_manifests()
    loaded = {obj["metadata"]["name"]: obj
              for obj in second.list(kind="ConfigMap", shared=True)}
    for one, other in (("x", "y"), ("a", "b")):
        assert loaded[one]["data"] == loaded[other]["data"]
        assert loaded[one]["data"] is not loaded[other]["data"]
        assert loaded[one]["data"]["mode"] is loaded[other]["data"]["mode"]


def test_copies_keep_shared_parts_apart_and_take_timestamps():
    shared = {"port": 80}
    obj: dict[str, Any] = {"a": shared, "b": shared, "when": datetime.datetime(2026, 1, 1),
                           "set": {1, 2}}
    copied = interface.copy_object(obj)
    assert copied == obj
    assert copied["a"] is not copied["b"] and copied["a"] is not shared
    copied["a"]["port"] = 81
    assert shared == {"port": 80} and copied["b"] == {"port": 80}
    plain = {"spec": {"rules": [{"host": "a.test"}]}, "data": b"\x00", "n": 1.5}
    again = interface.copy_object(plain)
    assert again == plain and again["spec"] is not plain["spec"]


def test_cache_files_are_private(tmp_path: Path):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "app.yaml").write_text(yaml.safe_dump(CONFIG))
    first = store(tmp_path)
    first.reload_manifests()
    first.save_state_cache()
    for path in (*cache_entries(tmp_path), tmp_path / "state" / local.STATE_CACHE):
        assert os.stat(path).st_mode & 0o077 == 0, path


def config(name: str, mode: str) -> str:
    return yaml.safe_dump({**CONFIG, "metadata": {"name": name, "namespace": "default"},
                           "data": {"mode": mode}})


def mode(loaded: LocalStore, name: str) -> str | None:
    found = loaded.get(kind="ConfigMap", namespace="default", name=name)
    return None if found is None else found["data"]["mode"]


def two_files_loaded(tmp_path: Path) -> tuple[Path, LocalStore]:
    """A store loaded from a.yaml (ConfigMap x) and b.yaml (ConfigMap y)."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "a.yaml").write_text(config("x", "in a"))
    (folder / "b.yaml").write_text(config("y", "in b"))
    kept = store(tmp_path)
    kept.reload_manifests()
    return folder, kept


def test_an_edit_reloads_only_its_file_and_objects_moving_between_files_follow(tmp_path: Path):
    folder, kept = two_files_loaded(tmp_path)
    (folder / "a.yaml").write_text(config("z", "new in a"))
    (folder / "b.yaml").write_text(config("y", "in b") + "---\n" + config("x", "moved to b"))
    assert kept.reload_manifests() == []
    assert (mode(kept, "x"), mode(kept, "y"), mode(kept, "z")) == (
        "moved to b", "in b", "new in a")
    (folder / "a.yaml").unlink()
    kept.reload_manifests()
    assert mode(kept, "z") is None and mode(kept, "x") == "moved to b"


def test_an_edit_defining_a_key_another_file_has_keeps_the_first_and_says_so(tmp_path: Path):
    folder, kept = two_files_loaded(tmp_path)
    (folder / "b.yaml").write_text(config("y", "in b") + "---\n" + config("x", "also in b"))
    (error,) = kept.reload_manifests()
    assert "also defined in" in error.message and mode(kept, "x") == "in a"
    (folder / "b.yaml").write_text(config("y", "fixed"))
    assert kept.reload_manifests() == []
    assert (mode(kept, "x"), mode(kept, "y")) == ("in a", "fixed")
