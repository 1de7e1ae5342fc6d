"""Chinese inverse text normalisation: spoken-form numbers in recognized Chinese text written as digits.

一千二百三十四 -> 1234, 百分之五 -> 5%, 三点五 -> 3.5, 二〇二六年十二月三日 -> 2026年12月3日, 三分之一 -> 1/3,
下午三点十五分 -> 下午3:15, 一三八零零一三八零零零 -> 13800138000, 负五 -> -5, 五十块钱 -> 50块钱.

Why not a library: cn2an (MIT, small) converts every numeral it sees (一心一意 -> 1心1意, 他一个人 -> 他1个人,
零下五度 -> 0下5度) and warns on times; WeTextProcessing is a full grammar but needs pynini/OpenFST (a large
compiled dependency) for what a few rules do here. The rules, in order:

1. context patterns (percent, fraction, clock time, decimal, date, money and age, negative), where even a
   single numeral is a number;
2. elsewhere, a run of numerals converts only when it is unambiguous: a well-formed number of two or more
   characters (二十, 一千二百三十四, 两百, 一万二) or a string of three or more digits (phone numbers, codes).

A lone numeral (一样, 三国, 十分好) and a run that is not a well-formed number (一五一十, 三三两两, 七八个,
千千万万) are words, idioms or names, and stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["normalize", "parse_number"]

_DIGITS = {"零": 0, "〇": 0, "一": 1, "幺": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8}
_DIGITS["九"] = 9
_UNITS = {"十": 10, "百": 100, "千": 1000}
_NUM = "[零〇一二两三四五六七八九幺十百千万亿]+"
_SEQ_CHARS = "零〇一二三四五六七八九幺"  # a digit string (phone, year): 两 is never read as a digit there
_SEQ = f"[{_SEQ_CHARS}]"
_MONEY = "元|块钱|美元|欧元|英镑|日元|港元|港币|岁|公斤|公里|千米|厘米|毫米|摄氏度"


def _small(s: str, abbreviated: bool) -> int | None:
    """A number below 10000 (一千二百三十四, 二十, 一百零五; with `abbreviated`, 三百五 = 350)."""
    total, pending, last, zero, started = 0, None, 10**9, False, False
    for ch in s:
        if ch in ("零", "〇"):
            if pending is not None:
                return None
            zero = True
        elif ch in _DIGITS:
            if pending is not None:
                return None  # two digits in a row: 一五, 七八
            pending = _DIGITS[ch]
        elif ch in _UNITS:
            unit = _UNITS[ch]
            if unit >= last:
                return None
            if pending is None:
                if ch != "十" or started:
                    return None
                pending = 1  # 十二 = 12
            total += pending * unit
            pending, last, zero = None, unit, False
        else:
            return None
        started = True
    if pending is not None:
        total += pending * last // 10 if abbreviated and not zero and last in (100, 1000) else pending
    return total if started else None


def _wan(s: str, abbreviated: bool) -> int | None:
    """A number below 10^8: [section]万[section]; 一万二 = 12000."""
    if "万" not in s:
        return _small(s, abbreviated)
    hi, lo = s.split("万", 1)
    high = _small(hi, False) if hi else None
    if not high:
        return None
    if len(lo) == 1 and lo in _DIGITS and lo not in ("零", "〇") and abbreviated:
        return high * 10000 + _DIGITS[lo] * 1000
    low = _small(lo.lstrip("零〇"), abbreviated) if lo.lstrip("零〇") else 0
    return None if low is None else high * 10000 + low


def parse_number(s: str) -> int | None:
    """The value of a spoken Chinese integer (一千二百三十四 -> 1234), or None if `s` is not one."""
    if "亿" in s:
        hi, lo = s.split("亿", 1)
        high = _wan(hi, False) if hi else None
        if not high:
            return None
        if len(lo) == 1 and lo in _DIGITS and lo not in ("零", "〇"):
            return high * 10**8 + _DIGITS[lo] * 10**7
        low = _wan(lo.lstrip("零〇"), True) if lo.lstrip("零〇") else 0
        return None if low is None else high * 10**8 + low
    return _wan(s, True)


def _digits(s: str) -> str:
    return "".join(str(_DIGITS[ch]) for ch in s)


def _value(s: str) -> str | None:
    """A run as digits: a number, or a digit string (二〇二六 -> 2026)."""
    n = parse_number(s)
    if n is not None:
        return str(n)
    if len(s) >= 2 and all(ch in _SEQ_CHARS for ch in s):
        return _digits(s)
    return None


def _sub(pattern: str, make: Callable[[re.Match[str]], str | None]) -> Callable[[str], str]:
    regex = re.compile(pattern)

    def apply(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            out = make(m)
            return m.group(0) if out is None else out

        return regex.sub(one, text)

    return apply


def _percent(m: re.Match[str]) -> str | None:
    n = parse_number(m.group(1))
    if n is None:
        return None
    return f"{n}.{_digits(m.group(2))}%" if m.group(2) else f"{n}%"


def _fraction(m: re.Match[str]) -> str | None:
    a, b = parse_number(m.group(1)), parse_number(m.group(2))
    return None if a is None or b is None else f"{b}/{a}"


def _clock(m: re.Match[str]) -> str | None:
    h, mi = parse_number(m.group(1)), parse_number(m.group(2))
    s = parse_number(m.group(3)) if m.group(3) else 0
    if h is None or mi is None or s is None or h > 24 or mi > 59 or s > 59:
        return None
    return f"{h}:{mi:02d}" + (f":{s:02d}" if m.group(3) else "")


def _decimal(m: re.Match[str]) -> str | None:
    n = parse_number(m.group(2))
    if n is None:
        return None
    return f"{'-' if m.group(1) else ''}{n}.{_digits(m.group(3))}"


def _year(m: re.Match[str]) -> str:
    return _digits(m.group(1)) + "年"


def _month_day(m: re.Match[str]) -> str | None:
    mo = parse_number(m.group(1))
    d = parse_number(m.group(2)) if m.group(2) else None
    if mo is None or not 1 <= mo <= 12 or (m.group(2) and (d is None or not 1 <= d <= 31)):
        return None
    if d is None and not m.group(0).startswith("年") and len(m.group(1)) < 2:
        return None  # 三月 alone may be a name (三月 the month is fine either way): only dates are sure
    return ("年" if m.group(0).startswith("年") else "") + f"{mo}月" + (f"{d}{m.group(3)}" if d else "")


def _unit_number(m: re.Match[str]) -> str | None:
    n = parse_number(m.group(1))
    return None if n is None else str(n)


def _negative(m: re.Match[str]) -> str | None:
    n = parse_number(m.group(1))
    return None if n is None else f"-{n}"


def _run(m: re.Match[str]) -> str | None:
    s = m.group(0)
    if len(s) >= 3 and all(ch in _SEQ_CHARS for ch in s):
        return _digits(s)  # 一三八零零一三八零零零, 一九九八
    if len(s) < 2 or all(ch in _SEQ_CHARS for ch in s):
        return None  # 一样, 七八个, 九九归一: words
    n = parse_number(s)
    return None if n is None else str(n)


_RULES: list[Callable[[str], str]] = [
    _sub(f"百分之({_NUM})(?:点({_SEQ}+))?", _percent),
    _sub(f"({_NUM})分之({_NUM})", _fraction),
    _sub(f"({_NUM})点({_NUM})分(?:({_NUM})秒)?", _clock),
    _sub(f"(负)?({_NUM})点({_SEQ}+)(?!点)", _decimal),
    _sub(f"({_SEQ}{{2,4}})年", _year),
    _sub(f"年?({_NUM})月(?:({_NUM})(日|号))?", _month_day),
    _sub(f"({_NUM})(?={_MONEY})", _unit_number),
    _sub(f"负({_NUM})", _negative),
    _sub(f"{_NUM}", _run),
]


def normalize(text: str) -> str:
    """`text` with its spoken-form Chinese numbers written as digits (see the module doc for what stays)."""
    if not any(ch in _DIGITS or ch in _UNITS or ch in "万亿" for ch in text):
        return text
    for rule in _RULES:
        text = rule(text)
    return text
