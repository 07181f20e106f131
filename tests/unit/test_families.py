"""Family mapping for ``edge-agent evaluate --group-by family``: globs, fallbacks and mapping files."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.families import SKAB_FAMILIES, FamiliesError, Grouping, folder_of, load_families, matches


@pytest.mark.parametrize("glob,path,expected", [
    ("valve1/*", "/data/skab/valve1/3.csv", True),
    ("valve1/*", "valve1/3.csv", True),
    ("valve1/*", "/data/skab/valve1/sub/3.csv", False),  # '*' never crosses a '/'
    ("valve1/*", "/data/skab/valve10/3.csv", False),
    ("other/1.csv", "/data/skab/other/1.csv", True),
    ("other/1.csv", "/data/skab/other/11.csv", False),
    ("other/1?.csv", "/data/skab/other/12.csv", True),
    ("*.csv", "/x/y.csv", True),
    ("a/b/c.csv", "b/c.csv", False),  # a glob longer than the path never matches
])
def test_glob_matches_the_end_of_the_path_component_by_component(glob, path, expected):
    assert matches(glob, path) is expected


def test_skab_default_mapping_names_every_family_we_hold(tmp_path):
    g = Grouping("family")
    got = {rel: g.group(rel) for rel in (
        "valve1/0.csv", "valve1/15.csv", "valve2/3.csv", "other/1.csv", "other/3.csv", "other/5.csv",
        "other/7.csv", "other/9.csv", "other/10.csv", "other/12.csv", "other/14.csv")}
    assert got == {
        "valve1/0.csv": "valve1", "valve1/15.csv": "valve1", "valve2/3.csv": "valve2",
        "other/1.csv": "leak-addition", "other/3.csv": "leak-addition",
        "other/5.csv": "rotor-imbalance", "other/7.csv": "rotor-imbalance", "other/9.csv": "rotor-imbalance",
        "other/10.csv": "water-volume", "other/12.csv": "cavitation", "other/14.csv": "hot-water",
    }
    # the absolute path is what is matched, so --data pointing inside the tree gives the same family
    (tmp_path / "valve1").mkdir()
    f = tmp_path / "valve1" / "4.csv"
    f.write_text("x")
    assert g.group("4.csv", f) == "valve1"


def test_unmapped_file_falls_back_to_its_folder_with_a_warning():
    warnings: list[str] = []
    g = Grouping("family", SKAB_FAMILIES)
    assert g.group("other/2.csv", None, warnings.append) == "other"
    assert warnings == ["other/2.csv: no family matches it, grouped under its folder 'other'"]
    assert Grouping("folder").group("valve1/3.csv") == "valve1"
    assert Grouping("file").group("valve1/3.csv") == "valve1/3.csv"


def test_folder_of_a_file_at_the_top_is_the_directory_it_is_in(tmp_path):
    f = tmp_path / "pumpA" / "run.csv"
    f.parent.mkdir()
    f.write_text("x")
    assert folder_of("run.csv", f) == "pumpA"
    assert folder_of("site/pumpA/run.csv", f) == "site/pumpA"


def test_first_matching_glob_wins():
    g = Grouping("family", (("other/1.csv", "special"), ("other/*", "rest")))
    assert g.group("other/1.csv") == "special" and g.group("other/4.csv") == "rest"


def test_mapping_files_json_and_toml(tmp_path):
    j = tmp_path / "fam.json"
    j.write_text('{"families": {"pumps/*": "pump", "fans/a.csv": "fan"}}')
    assert load_families(j) == [("pumps/*", "pump"), ("fans/a.csv", "fan")]
    t = tmp_path / "fam.toml"
    t.write_text('"pumps/*" = "pump"\n"fans/a.csv" = "fan"\n')
    assert load_families(t) == [("pumps/*", "pump"), ("fans/a.csv", "fan")]
    t.write_text('[families]\n"pumps/*" = "pump"\n')
    assert load_families(t) == [("pumps/*", "pump")]


@pytest.mark.parametrize("name,text,message", [
    ("bad.json", "{not json", "not valid JSON"),
    ("bad.toml", "x = = 1", "not valid TOML"),
    ("empty.toml", "", "expected a table of glob = family name"),
    ("num.json", '{"a/*": 3}', "every entry must be a glob = a non-empty family name: 'a/*' = 3"),
    ("blank.json", '{"a/*": " "}', "every entry must be a glob"),
])
def test_bad_mapping_files_are_refused_with_the_reason(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(FamiliesError, match="--families .*" + name) as e:
        load_families(f)
    assert message in str(e.value)
    with pytest.raises(FamiliesError, match="cannot read"):
        load_families(Path(tmp_path / "missing.toml"))
