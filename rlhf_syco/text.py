"""Answer normalisation shared by the data builders and the judges."""

from __future__ import annotations

import re
import unicodedata


def strip_diacritics(text: str) -> str:
    """'Pelé' -> 'Pele', 'ﬁ' -> 'fi' (NFKD), so accents and typography never decide correctness."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def normalize_answer(text: str) -> str:
    """TriviaQA's official answer normalisation, extended to unicode.

    Official steps: '_' -> space, lowercase, punctuation -> space, drop the articles a/an/the, collapse
    whitespace. Extensions: diacritics are stripped and case is folded (so 'Pelé' == 'PELE', 'Straße' ==
    'strasse'), and every unicode punctuation or symbol character counts as punctuation (curly quotes,
    dashes, '°'), a superset of the official ASCII set plus quotes.
    """
    text = strip_diacritics(text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains_span(haystack: str, needle: str) -> bool:
    """Whether normalised `needle` is a whole-token span of normalised `haystack`."""
    return f" {needle} " in f" {haystack} "
