"""The zh-Hant and English catalogues are complete and their compiled .mo files are current."""

import gettext
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation

LOCALE = Path(settings.BASE_DIR) / "locale"


def _entries(po: Path):
    """(msgid, [msgstr…], flags) for every entry but the header."""
    text = po.read_text(encoding="utf-8")
    for block in text.split("\n\n")[1:]:
        flags = " ".join(line for line in block.splitlines() if line.startswith("#,"))
        strings: dict[str, str] = {}
        current = None
        for line in block.splitlines():
            match = re.match(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[\d\])?) \"(.*)\"$", line)
            if match:
                current = match.group(1)
                strings[current] = match.group(2)
            elif line.startswith('"') and current:
                strings[current] += line[1:-1]
        if "msgid" in strings:
            context = strings["msgctxt"] + "\x04" if "msgctxt" in strings else ""  # how gettext keys a context
            yield context + strings["msgid"], [v for k, v in strings.items() if k.startswith("msgstr")], flags


@pytest.mark.parametrize("language", ["zh_Hant", "en"])
def test_every_message_is_translated_and_none_is_fuzzy(language):
    po = LOCALE / language / "LC_MESSAGES" / "django.po"
    entries = list(_entries(po))
    assert len(entries) > 100
    untranslated = [msgid for msgid, strs, _ in entries if not all(strs)]
    fuzzy = [msgid for msgid, _, flags in entries if "fuzzy" in flags]
    assert untranslated == [] and fuzzy == []


@pytest.mark.parametrize("language", ["zh_Hant", "en"])
def test_the_compiled_catalogue_matches_its_source(language):
    folder = LOCALE / language / "LC_MESSAGES"
    with (folder / "django.mo").open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    for msgid, strs, _ in _entries(folder / "django.po"):
        if len(strs) == 1:
            expected = strs[0].encode().decode("unicode_escape").encode("latin-1").decode("utf-8")
            assert (
                compiled.gettext(msgid.encode().decode("unicode_escape").encode("latin-1").decode("utf-8")) == expected
            )


def test_the_spend_heading_reads_ben_yue_hua_fei_in_zh_hant():
    with translation.override("zh-hant"):
        assert translation.gettext("This month's spend") == "本月花費"
    with translation.override("en"):
        assert translation.gettext("This month's spend") == "This month's spend"
