"""Prompt formats: rendering, registration, and a gate that judges every format a model is
served in (a candidate unlearnt behind one wrapper keeps the knowledge behind another)."""

from __future__ import annotations

import pytest
import tinylm
import torch
from conftest import SMOLLM2_CHAT_TEMPLATE, TINY_METHOD, fact_items

from forgetctl.app import versions
from forgetctl.core.errors import BadInput
from forgetctl.core.formats import check_served
from forgetctl.core.items import PromptItem, in_each_format, in_format
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.prompts import encode_pairs, format_prompt, formats_of
from forgetctl.lm.weights import load_model, load_tokenizer
from forgetctl.store.scores import ScoreCache
from forgetctl.unlearn.train import unlearn
from forgetctl.verify.checks import ForgetSet, in_formats, run_checks
from forgetctl.verify.checks.base import CheckResult, combine

SUBJECT = tinylm.TINY_SUBJECTS[0]


def test_each_format_renders_its_own_prompt(chat_tokenizer, tiny_lm_dir):
    q = "Where was Ana born?"
    chat, bare = format_prompt(chat_tokenizer, q), format_prompt(chat_tokenizer, q, "chat-default")
    assert chat == format_prompt(chat_tokenizer, q, "chat") and q in chat and q in bare
    assert "system" in chat and chat != bare  # the empty system message, or the template's
    assert format_prompt(chat_tokenizer, q, "plain") == f"Question: {q}\nAnswer:"
    shots = format_prompt(chat_tokenizer, q, "few-shot")
    assert shots.endswith(f"Question: {q}\nAnswer:") and shots.count("Question:") == 3
    plain_tok = load_tokenizer(tiny_lm_dir)  # no chat template: plain is its default
    assert format_prompt(plain_tok, q) == format_prompt(plain_tok, q, "plain")
    assert formats_of(plain_tok, ["chat", "plain", "chat-default", "few-shot"]) == [
        "plain", "few-shot"]  # fmt: skip
    with pytest.raises(BadInput, match="chat"):
        format_prompt(plain_tok, q, "chat")
    # A pair in a format is trained on that format's prompt, the answer after it.
    default = encode_pairs(chat_tokenizer, [(q, "In Lima.")])
    plain = encode_pairs(chat_tokenizer, [(q, "In Lima.", "plain")])
    assert default["input_ids"].shape != plain["input_ids"].shape

    def answer(batch) -> str:
        labels = batch["labels"][0]
        return chat_tokenizer.decode(labels[labels != -100][:-1])  # less the EOS

    assert answer(plain) == " In Lima." and answer(default) == "In Lima."


def test_completion_probes_a_record_by_how_the_model_continues_its_answer(chat_tokenizer):
    record = PromptItem(prompt="Where was Ana Lima born?", kind="record", source=0,
                        target="Ana Lima was born in Lima, Peru.")  # fmt: skip
    short = record.model_copy(update={"target": "In Lima."})
    asked = record.model_copy(update={"kind": "paraphrase"})
    [probe] = in_format([record, short, asked], "completion")  # no question, no short answer
    assert (probe.prompt, probe.target) == ("Ana Lima was", "born in Lima, Peru.")
    assert probe.kind == "record" and probe.format == "completion" and probe.source == 0
    assert format_prompt(chat_tokenizer, probe.prompt, "completion") == "Ana Lima was"
    batch = encode_pairs(chat_tokenizer, [probe.pair])
    labels = batch["labels"][0]
    assert chat_tokenizer.decode(labels[labels != -100][:-1]) == " born in Lima, Peru."
    # The subject and the controls are probed alike.
    control = record.model_copy(update={"target": "Bo Chen was born in Xi'an, China."})
    sets = ForgetSet([record, asked], {"c": [control]}).in_format("completion")
    assert [i.prompt for i in sets.items] == ["Ana Lima was"]
    assert [i.prompt for i in sets.control_items] == ["Bo Chen was"]


def test_an_item_in_the_default_format_keeps_its_cached_score_key(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite", lambda m: m)
    item = PromptItem(prompt="q", target="a", kind="record")
    [plain] = in_format([item], "plain")
    assert cache.keys("m", [item], "v") == cache.keys("m", in_format([item], None), "v")
    assert cache.keys("m", [item], "v") != cache.keys("m", [plain], "v")


def test_serving_formats_are_part_of_the_registration(tiny_lm_dir, chat_tokenizer, tmp_path):
    from forgetctl.app.home import Home
    from forgetctl.app.workspace import Workspace

    ws = Workspace.open(Home(tmp_path / "home"), create=True)
    # Unregistered: every served format the model can render.
    assert versions.serving_formats(ws.ledger, chat_tokenizer) == ["chat", "plain"]
    versions.register_base(ws.ledger, tiny_lm_dir, ["plain"])
    assert versions.serving_formats(ws.ledger, chat_tokenizer) == ["plain"]
    assert ws.ledger.versions.get(0)["metrics"] == {"serving_formats": ["plain"]}
    with pytest.raises(Exception, match="serving formats"):
        versions.register_base(ws.ledger, tiny_lm_dir, ["chat"])
    with pytest.raises(BadInput, match="unknown serving format 'few-shot'"):
        check_served(["few-shot"])


def test_a_request_passes_when_no_format_fails_and_one_has_evidence():
    def part(verdict: str) -> CheckResult:
        return CheckResult("forget", verdict)  # type: ignore[arg-type]

    # Nothing to forget behind one wrapper: the other format's evidence decides.
    assert combine("forget", {"1": part("no_signal"), "1 [plain]": part("pass")}).passed
    assert combine("forget", {"1": part("pass"), "1 [few-shot]": part("fail")}).verdict == "fail"
    both = {"1": part("no_signal"), "1 [plain]": part("no_signal")}
    assert combine("forget", both).verdict == "no_signal"
    # Requests still each need their own evidence.
    assert combine("forget", {"1": part("pass"), "2": part("no_signal")}).verdict == "no_signal"


# A larger step budget than the tiny method's: knowledge in the format the model was
# trained in is held more firmly than behind the chat wrapper it never saw.
METHOD = TINY_METHOD.model_copy(update={"max_steps": 200})


def test_a_candidate_unlearnt_in_one_format_is_rejected_in_the_served_one(tiny_lm_dir):
    """The tiny model learnt its facts in plain completion; it also has a chat template
    (the default format). Unlearnt in chat only, the subject is still known in plain and
    the gate rejects it there. Unlearnt in both served formats, the questions are forgotten
    but the model still continues the subject's answers from their first words, and the
    `completion` probe rejects it; unlearnt on those continuations too, it passes there."""
    torch.set_num_threads(1)
    parent, tok = load_model(tiny_lm_dir)
    tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    forget = fact_items(tinylm.facts_for(SUBJECT), "record")
    controls: dict[str, list[PromptItem]] = {}
    for row in tinylm.TINY_CONTROLS:
        controls.setdefault(row["author"], []).append(
            PromptItem(prompt=row["question"], target=row["answer"], kind="record"))  # fmt: skip
    retain = [
        i for s in tinylm.TINY_SUBJECTS[1:] for i in fact_items(tinylm.facts_for(s), "neighbor")
    ]
    sets = in_formats({"1": ForgetSet(forget, controls)}, tok, ["chat", "plain"])
    assert set(sets) == {"1", "1 [plain]", "1 [chat-default]", "1 [few-shot]", "1 [completion]"}

    def gate(formats: list[str | None]):
        model, _ = load_model(tiny_lm_dir)
        result = unlearn(model, tok, in_each_format(forget, formats),
                         in_each_format(retain, formats), METHOD)  # fmt: skip
        [r] = run_checks(parent, result.model, tok, sets, [], [], {}, VerifyConfig(),
                         checks=["forget"])  # fmt: skip
        failed = {reason.split(":")[0] for reason in r.reasons}
        return r, r.figures["requests"], failed

    chat_only, parts, failed = gate([None])
    assert chat_only.verdict == "fail" and "1 [plain]" in failed, chat_only.reasons
    plain = parts["1 [plain]"]["units"]["all"]["acc"]
    assert plain["parent_gap"] > 0.5 and plain["gap"] > plain["limit"]
    served, parts, failed = gate([None, "plain"])
    assert served.verdict == "fail" and failed == {"1 [completion]"}, served.reasons
    bare = parts["1 [completion]"]["units"]["all"]["acc"]
    assert bare["parent_gap"] > 0.3 and bare["gap"] > bare["limit"]
    _, parts, failed = gate([None, "plain", "completion"])
    assert not failed & {"1", "1 [plain]", "1 [completion]"}, failed
    assert parts["1 [completion]"]["units"]["all"]["acc"]["parent_gap"] > 0.3  # judged


def test_init_registers_the_serving_formats_or_refuses_them(tiny_lm_dir, forgetctl_home):
    from clirun import cli

    assert "--format needs --model" in cli("init", "--format", "plain", code=2).output
    bad = cli("init", "--model", str(tiny_lm_dir), "--format", "few-shot", code=2)
    assert "unknown serving format 'few-shot'" in bad.output
    assert not (forgetctl_home / "ledger.db").exists()  # refused before anything is written
    cli("init", "--model", str(tiny_lm_dir), "--format", "plain")
    from forgetctl.app.home import Home
    from forgetctl.app.workspace import Workspace

    assert Workspace.open(Home(forgetctl_home)).ledger.versions.get(0)["metrics"] == {
        "serving_formats": ["plain"]
    }
    assert "unknown format" in cli("model", "ask", "Hi?", "--format", "x", code=2).output


ALPACA = "### Instruction:\n{{ question }}\n\n### Response:\n"


def test_a_user_template_file_is_a_serving_format(tiny_lm_dir, forgetctl_home, tmp_path):
    """A server's own format (here Alpaca's) is registered from a Jinja file, and every step
    that loads a version renders it: the plan, apply and verify put prompts in it."""
    from clirun import cli

    from forgetctl.app.home import Home
    from forgetctl.app.workspace import Workspace

    (template := tmp_path / "alpaca.jinja").write_text(ALPACA)
    cli("init", "--model", str(tiny_lm_dir), "--format", "plain", "--format", str(template))
    ws = Workspace.open(Home(forgetctl_home))
    assert ws.ledger.versions.get(0)["metrics"] == {
        "serving_formats": ["plain", "alpaca"], "prompt_templates": {"alpaca": ALPACA}}  # fmt: skip
    template.unlink()  # registered in the ledger: the file is not needed again
    _, tok = versions.load_version(ws, 0)
    assert versions.serving_formats(ws.ledger, tok) == ["plain", "alpaca"]
    q = "Where was Ana born?"
    assert format_prompt(tok, q, "alpaca") == f"### Instruction:\n{q}\n\n### Response:\n"
    labels = encode_pairs(tok, [(q, "In Lima.", "alpaca")])["labels"][0]
    assert tok.decode(labels[labels != -100][:-1]) == "In Lima."  # after the newline directly
    sets = in_formats({"1": ForgetSet(fact_items(tinylm.facts_for(SUBJECT), "record"), {})},
                      tok, versions.serving_formats(ws.ledger, tok))  # fmt: skip
    assert "1 [alpaca]" in sets and sets["1 [alpaca]"].items[0].format == "alpaca"
    asked = cli("model", "ask", q, "--format", "alpaca", "--max-new-tokens", "2", "--json")
    assert '"format": "alpaca"' in asked.output


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (
            "alpaca.jinja",
            "### Instruction:\n\n### Response:\n",
            "{{ question }} in the prompt once",
        ),
        ("alpaca.jinja", "{{ question }} {% if %}", "not a Jinja template: line 1"),
        ("alpaca.jinja", "{{ system }} {{ question }}", "given `question` only"),
        ("alpaca.jinja", "{{ question.__class__.__mro__ }}{{ question }}", "cannot render"),
        ("chat.jinja", "{{ question }}", "not a built-in one"),
        ("Bad Name.jinja", "{{ question }}", "file name is its format's name"),
    ],
)
def test_a_template_that_cannot_serve_is_refused_before_anything_is_written(
    tiny_lm_dir, forgetctl_home, tmp_path, name, text, says
):
    from clirun import cli

    (template := tmp_path / name).write_text(text)
    out = cli("init", "--model", str(tiny_lm_dir), "--format", str(template), code=2).output
    assert says in out and "Traceback" not in out and len(out.strip().splitlines()) == 1
    assert not (forgetctl_home / "ledger.db").exists()


def test_the_demo_model_fine_tuned_in_a_user_template(tiny_lm_dir, forgetctl_home, tmp_path):
    """`demo build-model --format NAME.jinja` fine-tunes in the user's format and writes it
    into recipe.json, so a consolidation trains again in that format; `init` registers it."""
    import json

    from clirun import cli

    from forgetctl.app.consolidate import plan_consolidation
    from forgetctl.app.home import Home
    from forgetctl.app.setup import load_recipe
    from forgetctl.app.workspace import Workspace

    (template := tmp_path / "alpaca.jinja").write_text(ALPACA)
    data = tinylm.write_tofu_jsonl(tmp_path / "authors.jsonl")
    out = tmp_path / "deployed"
    cli("demo", "build-model", "--data", str(data), "--authors", "1", "--out", str(out),
        "--base", str(tiny_lm_dir), "--epochs", "1", "--format", str(template))  # fmt: skip
    recipe = json.loads((out / "recipe.json").read_text())
    assert (recipe["format"], recipe["template"]) == ("alpaca", ALPACA)
    assert load_recipe(out / "recipe.json").template == ALPACA
    cli("init", "--model", str(out), "--base", str(tiny_lm_dir), "--format", str(template),
        "--training-data", str(out / "training-data.jsonl"), "--recipe",
        str(out / "recipe.json"))  # fmt: skip
    ws = Workspace.open(Home(forgetctl_home))
    assert versions.prompt_templates(ws.ledger) == {"alpaca": ALPACA}
    with pytest.raises(Exception, match="nothing to consolidate"):
        plan_consolidation(ws)  # registered; no one forgotten yet
    (bad := tmp_path / "bad.json").write_text(json.dumps({**recipe, "template": "no question"}))
    with pytest.raises(BadInput, match="bad.json: template: the template must put"):
        load_recipe(bad)
