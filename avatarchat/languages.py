"""Spoken languages by code: their names, and what the LLM is told so it answers in the user's.

The ASR reports the language it heard (SenseVoice: zh, en, yue, ja, ko; Whisper: any of its ~100).
The reply follows it: the LLM is asked to answer in that language and the TTS picks a voice for it.
English needs no instruction (the system prompt is English), so English turns keep the exact prompt
whose KV prefix the LLM has cached.
"""

from __future__ import annotations

# Code -> the name an LLM understands best in an instruction.
NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese (简体中文)", "yue": "Cantonese (粵語)", "ja": "Japanese (日本語)",
    "ko": "Korean (한국어)", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "hi": "Hindi", "nl": "Dutch",
}


def normalise(code: str | None) -> str | None:
    """``"ZH"``, ``"<|zh|>"``, ``"zh-CN"`` -> ``"zh"``; None or SenseVoice's "nospeech" -> None."""
    if not code:
        return None
    key = code.strip().strip("<|>").lower().replace("_", "-").split("-")[0]
    return None if key in ("", "nospeech", "auto", "unk") else key


def reply_instruction(code: str | None) -> str:
    """The sentence added to the system prompt for a user who spoke ``code``; "" for English or
    unknown."""
    code = normalise(code)
    if code is None or code == "en":
        return ""
    name = NAMES.get(code, code)
    return f" The user speaks {name}: always answer in {name}."


def system_prompt_for(base: str, code: str | None) -> str:
    return base + reply_instruction(code)


def guess_from_script(text: str) -> str | None:
    """The language of typed text where its script says it (kana: ja, hangul: ko, Han: zh), else
    None (Latin and other scripts are many languages: the LLM follows the text itself)."""
    han = kana = hangul = 0
    for ch in text:
        o = ord(ch)
        if 0x3040 <= o <= 0x30FF:
            kana += 1
        elif 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
            hangul += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF:
            han += 1
    if kana:
        return "ja"
    if hangul > han:
        return "ko"
    return "zh" if han else None


def language_keys(by_language: dict[str, str]) -> dict[str, str]:
    """Validator body for a TTS's ``voices_by_language`` option: its codes lower-cased, as
    choice_for looks them up (the ASR's "zh", a config's "ZH" or "zh-TW" alike)."""
    return {code.strip().lower(): voice for code, voice in by_language.items()}


def choice_for(code: str | None, by_language: dict, default):
    """``by_language``'s entry for ``code`` ("zh-TW" tries "zh-tw", then "zh"), else ``default``:
    the voice a TTS speaks a reply in that language with."""
    if code:
        for key in (code.strip().lower(), normalise(code)):
            if key in by_language:
                return by_language[key]
    return default
