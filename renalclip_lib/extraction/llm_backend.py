"""Optional LLM back end: the paper's extraction prompt sent to an OpenAI-compatible endpoint.

Off unless the user configures an endpoint (a local server such as vLLM, llama.cpp or Ollama's
``/v1``). The prompt is Supplementary Data Table 35 with the options of Tables 33-34
(``Resources/prompts/extraction_prompt.txt``, ``extraction_questionnaire.txt``); the answer is a
JSON object of letters (``{"0": "A", "L1": "A", ..., "R14": "C"}``), mapped here to the class
indices of ``questionnaire.QUESTIONS`` (the paper's last option, "not mentioned", is class 0;
"DK" is -1). Only ``urllib`` is used. An endpoint that is down, times out or answers something
that is not that JSON raises ``ExtractionEndpointError`` (one line), or, with
``fallback="rules"``, the rule-based answers are returned with a warning.

Usage::

    ep = LLMEndpoint("http://localhost:8000/v1", model="qwen2.5-7b-instruct")
    answers, used = extract_with_fallback(report_text, ep, fallback="rules", warn=print)
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..constants import SIDES
from ..errors import RenalCLIPError
from ..questionnaire import DONT_KNOW, QUESTIONS
from .rules import SIDE_KEY, extract_answers

# Number of answer letters per question in Tables 33-34 (the last one is "not mentioned").
PAPER_LETTERS = {1: 4, 2: 4, 3: 5, 4: 2, 5: 5, 6: 4, 7: 7, 8: 3, 9: 7, 10: 4, 11: 3, 12: 5, 13: 5, 14: 3}
SIDE_LETTERS = {"A": "left", "B": "right", "C": "bilateral", "D": None}


class ExtractionEndpointError(RenalCLIPError):
    """The configured extraction endpoint is unreachable or answered something unusable."""


@dataclass
class LLMEndpoint:
    url: str                                   # base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1
    model: str = "default"
    timeout_s: float = 120.0
    api_key_env: str | None = None             # name of an environment variable holding a key (never logged)

    @property
    def chat_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


def build_prompt(report_text: str) -> str:
    """Table 35's prompt with the report and Tables 33-34's options filled in."""
    from ..resources import resource_path

    template = resource_path("prompts", "extraction_prompt.txt").read_text(encoding="utf-8")
    questionnaire = resource_path("prompts", "extraction_questionnaire.txt").read_text(encoding="utf-8").strip()
    return template.format(report=" ".join(str(report_text).split()), questionnaire=questionnaire)


def letter_to_class(number: int, letter: str) -> int:
    """Class index of answer ``letter`` to question ``number`` (1-14); "DK" -> -1."""
    letter = letter.strip().upper().rstrip(".)")[:2]
    if letter in ("DK", "D K"):
        return DONT_KNOW
    n = PAPER_LETTERS[number]
    i = ord(letter[:1]) - ord("A") if letter[:1].isalpha() else -1
    if not 0 <= i < n:
        raise ValueError(f"answer {letter!r} is not one of the letters A-{chr(ord('A') + n - 1)} or DK")
    if i == n - 1:
        return 0
    if number == 1:                            # "Other" is folded into "multiple/disseminated" as released
        return min(i + 1, 2)
    return i + 1


def _json_object(content: str) -> dict:
    m = re.search(r"\{.*\}", content, re.DOTALL)
    if not m:
        raise ValueError("no JSON object in the answer")
    raw = m.group(0)
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = json.loads(re.sub(r"([{,]\s*)([LR]?\d{1,2})\s*:", r'\1"\2":', raw))   # the paper's unquoted keys
    if not isinstance(obj, dict):
        raise ValueError("the JSON answer is not an object")
    return {str(k).strip().upper(): str(v) for k, v in obj.items()}


def parse_answers(content: str) -> dict:
    """Answers in ``extract_answers``'s layout from the model's text; ValueError if malformed."""
    obj = _json_object(content)
    side_letter = obj.get("0", "D").strip().upper()[:1]
    if side_letter not in SIDE_LETTERS:
        raise ValueError(f"question 0 answer {obj.get('0')!r} is not A, B, C or D")
    side = SIDE_LETTERS[side_letter]
    with_mass = set(SIDES) if side == "bilateral" else {side} if side else set()
    out = {SIDE_KEY: side}
    for s in SIDES:
        prefix = s[0].upper()
        for q in QUESTIONS:
            v = obj.get(f"{prefix}{q.number}")
            out[q.column(s)] = letter_to_class(q.number, v) if v else (DONT_KNOW if s in with_mass else 0)
    return out


def _post(endpoint: LLMEndpoint, prompt: str) -> str:
    body = json.dumps({"model": endpoint.model, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key_env and os.environ.get(endpoint.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[endpoint.api_key_env]}"
    req = urllib.request.Request(endpoint.chat_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=endpoint.timeout_s) as resp:
            payload = resp.read()
    except urllib.error.HTTPError as exc:
        raise ExtractionEndpointError(endpoint.chat_url, f"endpoint answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ExtractionEndpointError(endpoint.chat_url, f"endpoint unreachable ({reason})") from None
    try:
        return json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ExtractionEndpointError(endpoint.chat_url, "answer is not an OpenAI chat-completions JSON "
                                                         "(no choices[0].message.content)") from None


def llm_extract(report_text: str, endpoint: LLMEndpoint) -> dict:
    """Ask the endpoint; ``ExtractionEndpointError`` if it is down or the answer is malformed."""
    content = _post(endpoint, build_prompt(report_text))
    try:
        return parse_answers(content)
    except ValueError as exc:
        raise ExtractionEndpointError(endpoint.chat_url, f"malformed extraction answer ({exc})") from None


def extract_with_fallback(report_text: str, endpoint: LLMEndpoint | None = None, fallback: str = "rules",
                          warn=None, side: str | None = None) -> tuple[dict, str]:
    """(answers, "llm" or "rules"): the endpoint's answers, or the rules when none is configured
    or (``fallback="rules"``) when it fails; ``fallback="fail"`` re-raises the error."""
    if endpoint is None:
        return extract_answers(report_text, side=side), "rules"
    try:
        answers = llm_extract(report_text, endpoint)
    except ExtractionEndpointError as exc:
        if fallback != "rules":
            raise
        if warn:
            warn(f"{exc}; using the rule-based extractor")
        return extract_answers(report_text, side=side), "rules"
    if side is not None:
        answers = _as_one_kidney(answers, side)
    return answers, "llm"


def _as_one_kidney(answers: dict, side: str) -> dict:
    """Answers of a text known to describe one kidney: the kidney the model answered for becomes ``side``."""
    said = answers[SIDE_KEY]
    source = side if said in (side, "bilateral") else said
    out = {q.column(s): 0 for s in SIDES for q in QUESTIONS}
    if source in SIDES:
        out.update({q.column(side): answers[q.column(source)] for q in QUESTIONS})
    out[SIDE_KEY] = side if source in SIDES else None
    return out
