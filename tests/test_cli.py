"""The depin command on a real SQLite file, and again over HTTP (``--api``, a real uvicorn on a
loopback port): happy paths, and bad input that changes nothing, the same in both modes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import cli
from depin.config import ENV_API_URL

JOB_YAML = textwrap.dedent(
    """
    name: chat-llama3-8b
    command: ["python", "-c", "print('hello from the edge')"]
    resources: {gpus: 1, vram_gib: 16, gpu_models: ["RTX 4090", "L4"], accelerator: gpu}
    placement:
      near: [{lat: 52.52, lon: 13.40}]
      max_latency_ms: 50
      regions: [eu-central]
    pricing: {max_usd_per_gpu_hour: 1.50, budget_usd: 5.00}
    objective: {cost: 0.5, latency: 0.4, reliability: 0.1}
    max_duration_s: 600
    """
)


LOCAL_ONLY = "local_only"


@pytest.fixture(autouse=True, params=["local", "remote"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs against the embedded market, then against ``depin serve`` over HTTP:
    the same commands, output, JSON and exit codes (DEPIN_API_URL is ``--api``'s variable)."""
    if request.param == "remote":
        marker = request.node.get_closest_marker(LOCAL_ONLY)
        if marker is not None:
            pytest.skip(f"local only: {marker.args[0]}")
        monkeypatch.setenv(ENV_API_URL, request.getfixturevalue("live_server"))
    return str(request.param)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(*args: str) -> object:
    return json.loads(ok(*args, "--json"))


@pytest.fixture
def market(home: Path) -> Path:
    """A provider with one Berlin node and a developer with $20, all through the CLI."""
    ok("keys", "new", "acme")
    ok("keys", "new", "ada")
    populate()
    return home


def populate() -> None:
    """The market of the ``market`` fixture, made with the local keys acme and ada."""
    ok("provider", "register", "acme", "--key", "acme")
    ok(
        "node",
        "add",
        "--provider",
        "acme",
        "--gpu",
        "RTX 4090",
        "--gpus",
        "2",
        "--price-usd-per-gpu-hour",
        "0.45",
        "--lat",
        "52.52",
        "--lon",
        "13.405",
        "--tier",
        "edge",
        "--region",
        "eu-central",
        "--network",
        "fiber",
    )
    ok("account", "create", "ada", "--key", "ada")
    ok("account", "deposit", "ada", "20")


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def state(home: Path) -> tuple[int, int]:
    """(ada's available micro-USD, number of jobs): what a refused command must not change."""
    balance = as_json("account", "balance", "ada")
    return balance["available_micro_usd"], len(as_json("job", "list"))  # type: ignore[index]


def refused(home: Path, args: list[str], message: str) -> None:
    before = state(home)
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert state(home) == before
    assert as_json("ledger", "verify")["ok"] is True  # type: ignore[index]


def test_init_reports_home_database_and_market_id(home: Path, mode: str) -> None:
    data = as_json("init")
    assert data["home"] == str(home)  # type: ignore[index]
    if mode == "local":
        assert data["database"].startswith("sqlite:///")  # type: ignore[index]
    else:  # a client of the API has no database: it says which market it talks to
        assert data["api"].startswith("http://127.0.0.1:")  # type: ignore[index]
    assert data["market_id"].startswith("depin-")  # type: ignore[index]


def test_new_ids_print_alone_and_as_json(home: Path) -> None:
    ok("keys", "new", "acme")
    assert ok("provider", "register", "acme", "--key", "acme").strip().isdigit()
    ok("keys", "new", "ada")
    assert as_json("account", "create", "ada", "--key", "ada")["id"] > 0  # type: ignore[index]


def test_a_developer_funds_an_account_and_sees_the_balance(market: Path) -> None:
    balance = as_json("account", "balance", "ada")
    assert balance["available_micro_usd"] == 20_000_000  # type: ignore[index]
    assert "$20.00" in ok("account", "balance", "ada")


def test_node_list_shows_the_node_and_its_city(market: Path) -> None:
    nodes = as_json("node", "list")
    assert [(n["gpu_model"], n["gpus_free"], n["region"]) for n in nodes] == [
        ("RTX 4090", 2, "eu-central")
    ]  # type: ignore[index,union-attr]
    assert "Berlin" in ok("node", "list")


def test_submit_prints_the_id_and_the_job_waits_for_a_scheduler(
    market: Path, tmp_path: Path
) -> None:
    job_id = int(ok("job", "submit", str(write(tmp_path, JOB_YAML)), "--as", "ada"))
    status = as_json("job", "status", str(job_id))
    assert status["state"] == "pending"  # type: ignore[index]
    assert status["max_cost_micro_usd"] == 250_000  # $1.50 x 1 GPU x 600 s  # type: ignore[index]
    assert as_json("account", "balance", "ada")["held_micro_usd"] == 250_000  # type: ignore[index]
    explain = as_json("job", "explain", str(job_id))
    assert explain["metric"]["candidates"][0]["node_id"] == 1  # type: ignore[index]
    assert "chat-llama3-8b" in ok("job", "list")


def test_submit_picks_the_only_local_developer_account(market: Path, tmp_path: Path) -> None:
    assert ok("job", "submit", str(write(tmp_path, JOB_YAML))).strip() == "1"


def test_a_rotated_key_signs_and_the_revoked_one_signs_nothing(
    market: Path, tmp_path: Path
) -> None:
    old_envelope = tmp_path / "old.dsse.json"
    job_yaml = str(write(tmp_path, JOB_YAML))
    ok("manifest", "sign", job_yaml, "--key", "ada", "-o", str(old_envelope))
    rotated = as_json("keys", "rotate", "ada", "--revoke-old")
    assert rotated["name"] == "ada-2" and len(rotated["revoked"]) == 1  # type: ignore[index]
    states = {k["key_id"]: k["state"] for k in as_json("keys", "list", "--account", "ada")}  # type: ignore[union-attr,index]
    assert states == {rotated["key_id"]: "active", rotated["revoked"][0]: "revoked"}  # type: ignore[index]
    refused(market, ["job", "submit", str(old_envelope)], "was revoked")
    assert ok("job", "submit", job_yaml, "--as", "ada").strip() == "1"  # signed with ada-2
    revoked = as_json("keys", "revoke", "ada-2")
    assert revoked["state"] == "revoked"  # type: ignore[index]
    refused(market, ["job", "submit", job_yaml, "--as", "ada"], "no active private key")


def test_manifest_sign_then_verify_then_submit(market: Path, tmp_path: Path) -> None:
    envelope = tmp_path / "job.dsse.json"
    ok("manifest", "sign", str(write(tmp_path, JOB_YAML)), "--key", "ada", "-o", str(envelope))
    info = as_json("manifest", "verify", str(envelope))
    assert info["signer"] == "ada" and info["digest"].startswith("sha256:")  # type: ignore[index]
    assert info["issuer_verified"] is True  # type: ignore[index]
    assert info["job"]["name"] == "chat-llama3-8b"  # type: ignore[index]
    assert ok("job", "submit", str(envelope)).strip() == "1"


def test_manifest_verify_refuses_a_signer_who_claims_another_account(
    market: Path, tmp_path: Path
) -> None:
    ok("keys", "new", "mallory")
    ok("account", "create", "mallory", "--key", "mallory")
    envelope = tmp_path / "forged.dsse.json"
    job_yaml = str(write(tmp_path, JOB_YAML))
    ok("manifest", "sign", job_yaml, "--key", "mallory", "--as", "ada", "-o", str(envelope))
    refused(market, ["manifest", "verify", str(envelope)], "is registered to 'mallory'")
    offline = ok("manifest", "verify", str(envelope), "--offline")
    assert "signer: ada (UNVERIFIED" in offline


def test_ledger_show_lists_balances_and_entries(market: Path, tmp_path: Path) -> None:
    ok("job", "submit", str(write(tmp_path, JOB_YAML)), "--as", "ada")
    shown = as_json("ledger", "show", "--account", "ada")
    kinds = [e["kind"] for e in shown["entries"]]  # type: ignore[index]
    assert kinds == ["deposit", "hold"]
    assert "ledger ok: 2 entries" in ok("ledger", "verify")


def test_ledger_show_limit_keeps_the_newest_entries_in_chain_order(
    market: Path, tmp_path: Path
) -> None:
    ok("job", "submit", str(write(tmp_path, JOB_YAML)), "--as", "ada")  # deposit 1, hold 2
    ok("account", "deposit", "ada", "5")  # entry 3
    shown = as_json("ledger", "show", "--limit", "2")
    assert [e["id"] for e in shown["entries"]] == [2, 3]  # type: ignore[index]


def test_gpus_lists_the_catalog(home: Path) -> None:
    names = [g["name"] for g in as_json("gpus")]  # type: ignore[union-attr,index]
    assert "Jetson AGX Orin 64GB" in names and "Coral Edge TPU" in names


@pytest.mark.local_only("the database is upgraded where the market runs, not by its clients")
def test_db_upgrade_reports_the_revision(home: Path) -> None:
    assert "database at revision" in ok("db", "upgrade")


# -- bad input: one line on stderr, exit 1, nothing changed ---------------------------------------


def test_malformed_yaml_is_refused(market: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ncommand: [a\n")
    refused(market, ["job", "submit", str(path), "--as", "ada"], "malformed YAML at line")


def test_an_unknown_key_is_refused(market: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path, JOB_YAML.replace("max_duration_s: 600", "max_duration_s: 600\ngpu_count: 2")
    )
    refused(market, ["job", "submit", str(path), "--as", "ada"], "unknown key 'gpu_count'")


def test_an_unknown_gpu_model_in_a_manifest_is_refused(market: Path, tmp_path: Path) -> None:
    path = write(tmp_path, JOB_YAML.replace('"L4"]', '"RTX 4080"]'))
    refused(market, ["job", "submit", str(path), "--as", "ada"], "did you mean 'RTX 4090'")


def test_an_unknown_gpu_model_for_a_node_is_refused(market: Path) -> None:
    args = [
        "node",
        "add",
        "--provider",
        "acme",
        "--gpu",
        "H200",
        "--gpus",
        "1",
        "--price-usd-per-gpu-hour",
        "2",
        "--lat",
        "0",
        "--lon",
        "0",
        "--tier",
        "regional",
        "--region",
        "eu-west",
        "--network",
        "fiber",
    ]
    refused(market, args, "unknown GPU model 'H200'")
    assert len(as_json("node", "list")) == 1  # type: ignore[arg-type]


def test_a_tampered_envelope_is_refused(market: Path, tmp_path: Path) -> None:
    envelope = tmp_path / "job.dsse.json"
    ok("manifest", "sign", str(write(tmp_path, JOB_YAML)), "--key", "ada", "-o", str(envelope))
    data = json.loads(envelope.read_text())
    data["payloadType"] = "application/vnd.depin.job+json; version=1 "
    envelope.write_text(json.dumps(data))
    refused(market, ["job", "submit", str(envelope)], "payloadType")
    data["payloadType"] = "application/vnd.depin.job+json; version=1"
    data["payload"] = data["payload"][:-8] + (
        "A" * 8 if not data["payload"].endswith("A" * 8) else "B" * 8
    )
    envelope.write_text(json.dumps(data))
    refused(market, ["job", "submit", str(envelope)], "")


def test_a_replayed_envelope_is_refused(market: Path, tmp_path: Path) -> None:
    envelope = tmp_path / "job.dsse.json"
    ok("manifest", "sign", str(write(tmp_path, JOB_YAML)), "--key", "ada", "-o", str(envelope))
    ok("job", "submit", str(envelope))
    refused(market, ["job", "submit", str(envelope)], "was already used")


def test_an_envelope_from_an_unregistered_key_is_refused(market: Path, tmp_path: Path) -> None:
    ok("keys", "new", "mallory")
    envelope = tmp_path / "job.dsse.json"
    ok(
        "manifest",
        "sign",
        str(write(tmp_path, JOB_YAML)),
        "--key",
        "mallory",
        "--as",
        "ada",
        "-o",
        str(envelope),
    )
    refused(market, ["job", "submit", str(envelope)], "unregistered key")


def test_a_job_over_the_balance_is_refused(market: Path, tmp_path: Path) -> None:
    path = write(
        tmp_path, JOB_YAML.replace("budget_usd: 5.00", "budget_usd: 500").replace("600", "604800")
    )
    refused(
        market,
        ["job", "submit", str(path), "--as", "ada"],
        "deposit with `depin account deposit ada",
    )


def test_a_job_no_node_can_take_is_refused(market: Path, tmp_path: Path) -> None:
    path = write(tmp_path, JOB_YAML.replace("vram_gib: 16", "vram_gib: 80"))
    refused(
        market, ["job", "submit", str(path), "--as", "ada"], "vram_gib >= 80: rejected 1 of 1 nodes"
    )


def test_unknown_accounts_and_jobs_are_clear_errors(market: Path) -> None:
    refused(market, ["account", "balance", "nobody"], "no account named 'nobody'")
    refused(market, ["job", "status", "99"], "no job with id 99")


def test_an_output_file_that_cannot_be_written_is_a_clear_error(
    market: Path, tmp_path: Path
) -> None:
    nowhere = str(tmp_path / "missing-dir" / "out.json")
    refused(market, ["ledger", "export", "-o", nowhere], f"cannot write {nowhere}")
    job_yaml = str(write(tmp_path, JOB_YAML))
    refused(market, ["manifest", "sign", job_yaml, "--key", "ada", "-o", nowhere], "cannot write")


def test_a_failed_export_leaves_the_earlier_file_as_it_was(
    market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    earlier = tmp_path / "ledger.jsonl"
    earlier.write_text("earlier export\n")
    with monkeypatch.context() as env, socket.socket() as closed:
        if mode == "local":  # a database that cannot be opened
            env.setenv("DEPIN_DATABASE_URL", f"sqlite:///{tmp_path / 'no-such-dir' / 'depin.db'}")
        else:  # a market that cannot be reached: a bound port nobody listens on
            closed.bind(("127.0.0.1", 0))
            env.setenv(ENV_API_URL, f"http://127.0.0.1:{closed.getsockname()[1]}")
            env.setattr("depin.api.remote.BACKOFF_S", 0.0)
        result = run("ledger", "export", "-o", str(earlier))
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert earlier.read_text() == "earlier export\n"
    assert list(tmp_path.glob(".*.partial")) == []
    ok("ledger", "export", "-o", str(earlier))
    assert earlier.read_text().count("\n") >= 1 and "earlier" not in earlier.read_text()


def test_flags_that_cannot_apply_are_refused(market: Path, tmp_path: Path, mode: str) -> None:
    job_yaml = str(write(tmp_path, JOB_YAML))
    refused(market, ["job", "submit", job_yaml, "--timeout-s", "5"], "--timeout-s limits --wait")
    refused(market, ["job", "list", "--account", "zed"], "no account named 'zed'")
    db_refusal = {
        "local": "cannot migrate to 'nonsense'",
        "remote": "the database of a market served over HTTP is upgraded where it runs",
    }
    refused(market, ["db", "upgrade", "--revision", "nonsense"], db_refusal[mode])
    ok("keys", "new", "bob")
    ok("account", "create", "bob", "--key", "bob")
    envelope = tmp_path / "ada.dsse.json"
    ok("manifest", "sign", job_yaml, "--key", "ada", "-o", str(envelope))
    refused(market, ["job", "submit", str(envelope), "--as", "bob"], "signed for account 'ada'")


def test_a_count_written_as_a_boolean_is_refused(market: Path, tmp_path: Path) -> None:
    text = JOB_YAML.replace("gpus: 1", "gpus: true")
    assert text != JOB_YAML
    refused(market, ["job", "submit", str(write(tmp_path, text)), "--as", "ada"], "resources.gpus")


def test_an_empty_near_is_a_usage_error_and_no_match_is_an_empty_table(market: Path) -> None:
    assert run("offers", "--near", "").exit_code == 2
    assert run("job", "status", "9" * 23).exit_code == 2  # not a database key at all
    result = run("offers", "--near", "35.68,139.69", "--max-latency-ms", "5", "--sort", "latency")
    assert result.exit_code == 0, result.output
    assert "no free capacity matches" in result.stderr


def test_usage_errors_exit_2(home: Path) -> None:
    result = run("node", "add", "--gpus", "two")
    assert result.exit_code == 2
    result = run("account", "deposit", "ada", "-5")
    assert result.exit_code == 2


def test_offers_searches_free_capacity(market: Path) -> None:
    hits = as_json("offers", "--near", "52.52,13.40", "--max-latency-ms", "20", "--sort", "latency")
    assert [h["node_id"] for h in hits] == [1]  # type: ignore[index]
    assert hits[0]["rtt_ms"] == pytest.approx(2.0, abs=0.05)  # type: ignore[index]
    assert as_json("offers", "--gpu", "H100") == []
    assert "RTX 4090" in ok("offers")


def test_offers_refuses_a_latency_sort_without_users(market: Path) -> None:
    result = run("offers", "--sort", "latency")
    assert result.exit_code == 1
    assert "needs a place to measure from" in result.stderr


@pytest.mark.local_only("bench measures the embedded scheduler and database in this process")
def test_bench_scheduler_reports_every_figure(home: Path) -> None:
    data = as_json(
        "bench",
        "scheduler",
        "--nodes",
        "300",
        "--jobs",
        "200",
        "--big-nodes",
        "600",
        "--classad-jobs",
        "2",
    )
    rows = data["single_job"]  # type: ignore[index]
    assert [(r["workload"], r["nodes"]) for r in rows] == [
        ("template", 300),
        ("template", 600),
        ("distinct", 300),
        ("distinct", 600),
    ]
    assert all(r["busy_gpus_pct"] > 0 for r in rows), "decisions see a fleet a batch filled"
    for r in rows:  # refusals (no node could ever take the job) are timed apart, and counted
        assert r["p50_ms"] > 0 and r["fitting_p99_ms"] <= r["max_ms"]
        assert r["never_fit"] < r["decisions"]
    for workload in ("template", "distinct"):
        batch = data["batch"][workload]  # type: ignore[index]
        assert batch["ledger_ok"] is True and batch["placed"] > 0
        parts = batch["read_s"] + batch["plan_s"] + batch["commit_s"] + batch["gc_s"]
        assert batch["cycle_s"] == pytest.approx(parts, abs=0.002)
        for key in ("quality", "quality_single_gpu"):
            q = data[key][workload]  # type: ignore[index]
            assert (q["nodes"], q["jobs"]) == (300, 200)
            assert q["reference"]["proven_optimal"] is True
            # Against a proven optimum no valid plan places more; every plan is checked again.
            for row in q["strategies"].values():
                assert row["valid"] is True and row["placed_vs_exact"] <= 0
    # 200 distinct jobs are 200 request classes: the per-job path, which counts its work.
    work = data["batch"]["distinct"]["plan_work"]  # type: ignore[index]
    assert work["pairs_decided"] == 200 * 300 and 0 < work["nodes_scored"] < 200 * 300
    # One GPU size: the flow is exact, so it must match the independent model.
    optimal = data["quality_single_gpu"]["template"]["strategies"]["optimal (flow over cells)"]  # type: ignore[index]
    assert optimal["placed_vs_exact"] == 0 and abs(optimal["cost_gap_pct"]) < 0.01
    classads = data["classads"]  # type: ignore[index]
    for path in ("class_path", "per_job_scan"):
        assert classads[path]["same_feasible_sets"] is True
    # The scan decides whole blocks and places at once: fewer evaluations than pairs.
    scan = classads["per_job_scan"]
    assert scan["evaluations_per_s"] < scan["pairs_decided_per_s"]


# -- the same session, locally and over HTTP ------------------------------------------------------

SESSION = [
    ["account", "balance", "ada"],
    ["node", "list"],
    ["job", "submit", "{job}", "--as", "ada"],
    ["job", "submit", "{job}"],
    ["job", "status", "1"],
    ["job", "list"],
    ["job", "list", "--account", "ada", "--state", "pending", "--limit", "1"],
    ["job", "explain", "1"],
    ["job", "cancel", "2"],
    ["offers", "--near", "52.52,13.40"],
    ["keys", "list", "--account", "ada"],
    ["node", "allocations", "1"],
    ["ledger", "show"],
    ["ledger", "show", "--account", "ada", "--limit", "3"],
    ["ledger", "verify"],
    ["account", "balance", "nobody"],
    ["job", "status", "99"],
    ["job", "explain", "99"],
    ["node", "allocations", "99"],
    ["account", "deposit", "nobody", "5"],
    ["keys", "list", "--account", "nobody"],
]
# What differs by nature between two markets: their ids, clocks, and the hashes over them.
VOLATILE = [
    (re.compile(r"depin-[0-9a-f]{6,}"), "<market>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ][\d:.]+(\+00:00|Z)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<hash>"),
    (re.compile(r"\d+(\.\d+)? ?s ago"), "<ago>"),
]


def transcript(tmp_path: Path, *options: str) -> list[tuple[str, int, str, str]]:
    """Each SESSION command's exit code, stdout and stderr (as text and as --json)."""
    job_yaml = str(write(tmp_path, JOB_YAML))
    seen = []
    for args in SESSION:
        args = [a.format(job=job_yaml) for a in args]
        for variant in (args, [*args, "--json"]):
            if args[:2] == ["job", "submit"] and variant is not args:
                continue  # submitting twice would make a second job
            result = run(*options, *variant)
            out, err = result.stdout, result.stderr
            for pattern, stand_in in VOLATILE:
                out, err = pattern.sub(stand_in, out), pattern.sub(stand_in, err)
            seen.append((" ".join(variant[:3]), result.exit_code, out, err))
    return seen


def test_a_session_prints_the_same_locally_and_over_http(
    home: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "local":
        pytest.skip("the remote run of this test compares itself with a local one")
    ok("keys", "new", "acme")
    ok("keys", "new", "ada")
    populate()
    api = os.environ[ENV_API_URL]
    monkeypatch.delenv(ENV_API_URL)  # the session names the market with --api instead
    remote = transcript(tmp_path, "--api", api)
    local_home = tmp_path / "local-home"
    shutil.copytree(home / "keys", local_home / "keys")  # the same key ids in both markets
    monkeypatch.setenv("DEPIN_HOME", str(local_home))
    populate()
    local = transcript(tmp_path)
    for there, here in zip(remote, local, strict=True):
        assert there == here


@pytest.mark.local_only("bench api starts its own depin serve")
def test_bench_api_drives_a_live_server_through_the_sdk(home: Path) -> None:
    data = as_json("bench", "api", "--clients", "2", "--seconds", "1", "--processes", "1")
    for phase in ("submit", "offers", "job_status"):
        figures = data[phase]  # type: ignore[index]
        assert figures["requests"] > 0 and figures["requests_per_s"] > 0
        assert figures["p99_ms"] >= figures["p50_ms"] > 0
        assert figures["errors"] == {"client": 0, "server": 0, "rate_limited": 0}
        assert figures["idle_clients"] == {"no_jobs": 0, "out_of_envelopes": 0}
    assert data["ledger_ok"] is True  # type: ignore[index]


def test_bench_api_counts_an_error_by_its_status_not_its_transport() -> None:
    from depin.bench.api import _error_kind
    from depin.errors import DatabaseError, NotFoundError, RateLimitedError, RemoteError

    # A 503 reaches the SDK as the server's own class, not as a RemoteError.
    assert _error_kind(DatabaseError("the database is unreachable")) == "server"
    assert _error_kind(RemoteError("cannot reach the market")) == "server"
    assert _error_kind(NotFoundError("no job 7")) == "client"
    assert _error_kind(RateLimitedError("slow down")) == "rate_limited"
