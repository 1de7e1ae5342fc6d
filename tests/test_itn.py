"""Chinese inverse text normalisation (qasr_live.itn): a table of spoken forms and what they become, idioms and
names that must stay as they are, and the parser on every number it can write."""

from __future__ import annotations

import numpy as np
import pytest

from qasr_live.itn import normalize, parse_number

CONVERTED = [
    # the cases
    ("一千二百三十四", "1234"),
    ("百分之五", "5%"),
    ("三点五", "3.5"),
    ("二〇二六年十二月三日", "2026年12月3日"),
    # integers
    ("十二", "12"),
    ("二十", "20"),
    ("两百", "200"),
    ("三百五", "350"),
    ("一百零五", "105"),
    ("一千零五十", "1050"),
    ("一万二千", "12000"),
    ("一万二", "12000"),
    ("一万零五", "10005"),
    ("一百二十三万四千五百六十七", "1234567"),
    ("一亿三千万", "130000000"),
    ("两千零二十六", "2026"),
    ("今年有二十个人参加", "今年有20个人参加"),
    ("第十二届", "第12届"),
    # decimals, percentages, fractions, negatives
    ("零点五", "0.5"),
    ("十二点五元", "12.5元"),
    ("圆周率是三点一四一五九", "圆周率是3.14159"),
    ("百分之三十点五", "30.5%"),
    ("增长了百分之一百", "增长了100%"),
    ("三分之一", "1/3"),
    ("百分之五十的人", "50%的人"),
    ("负五度", "-5度"),
    ("负三点五", "-3.5"),
    # dates and times
    ("一九九八年", "1998年"),
    ("二零二六年", "2026年"),
    ("十月一日", "10月1日"),
    ("三月十五号", "3月15号"),
    ("二〇二六年三月", "2026年3月"),
    ("十二月", "12月"),
    ("下午三点十五分", "下午3:15"),
    ("八点零五分", "8:05"),
    ("十点三十分二十秒", "10:30:20"),
    # phone numbers and codes
    ("电话一三八零零一三八零零零", "电话13800138000"),
    ("幺三八", "138"),
    ("房间号是三零二", "房间号是302"),
    # money, age, measures
    ("人民币五十块", "人民币50块"),
    ("五块钱", "5块钱"),
    ("一共三百元", "一共300元"),
    ("我三岁了", "我3岁了"),
    ("跑了十公里", "跑了10公里"),
    ("两百美元", "200美元"),
    # in sentences, with words around
    ("他花了一千二百三十四块钱买了三点五斤苹果", "他花了1234块钱买了3.5斤苹果"),
    ("会议在二〇二六年十二月三日下午三点十五分开始", "会议在2026年12月3日下午3:15开始"),
]

UNCHANGED = [
    "一心一意",
    "三心二意",
    "一五一十",
    "三三两两",
    "千千万万",
    "乱七八糟",
    "四面八方",
    "十全十美",
    "五颜六色",
    "一模一样",
    "九九归一",
    "七上八下",
    "他一个人去的",
    "万一下雨怎么办",
    "我们一起走",
    "十分好",
    "有一点冷",
    "一点一点地",
    "三国演义",
    "张三和李四",
    "王二小",
    "七八个人",
    "八点半",
    "第一名",
    "零下五度",
    "一样",
    "这是English text, 123",
    "",
]


@pytest.mark.parametrize(("spoken", "written"), CONVERTED, ids=[c[0] for c in CONVERTED])
def test_converted(spoken: str, written: str) -> None:
    assert normalize(spoken) == written


@pytest.mark.parametrize("text", UNCHANGED, ids=[t or "empty" for t in UNCHANGED])
def test_left_alone(text: str) -> None:
    assert normalize(text) == text


def test_the_table_is_large_enough() -> None:
    assert len(CONVERTED) + len(UNCHANGED) >= 50


def test_normalize_is_idempotent() -> None:
    for spoken, _ in CONVERTED:
        once = normalize(spoken)
        assert normalize(once) == once


_DIGIT_WORDS = "零一二三四五六七八九"


def _spoken(n: int) -> str:
    """An independent speller: the standard reading of 0 < n < 10^8 (一万零五百, 十二 for 10..19 at the start)."""

    def small(v: int, leading: bool) -> str:
        out, zero = "", False
        for unit, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
            d = v // unit % 10
            if d == 0:
                zero = bool(out)
                continue
            if zero:
                out += "零"
                zero = False
            out += ("" if (unit == 10 and d == 1 and not out and leading) else _DIGIT_WORDS[d]) + name
        return out

    hi, lo = divmod(n, 10000)
    if not hi:
        return small(lo, True)
    text = small(hi, True) + "万"
    if lo:
        text += ("零" if lo < 1000 else "") + small(lo, False)
    return text


@pytest.mark.parametrize("n", [1, 7, 10, 11, 19, 20, 99, 100, 101, 110, 999, 1000, 1001, 1010, 1100, 9999, 10000,
                               10001, 10010, 10100, 20000, 99999, 100000, 1000001, 12345678, 99999999])  # fmt: skip
def test_parse_number_reads_what_the_speller_writes(n: int) -> None:
    assert parse_number(_spoken(n)) == n


def test_parse_number_every_value_below_twenty_thousand() -> None:
    wrong = [n for n in range(1, 20000) if parse_number(_spoken(n)) != n]
    assert not wrong, wrong[:10]


def test_parse_number_rejects_what_is_not_a_number() -> None:
    for text in ("一五", "百", "万一", "十百", "一千千", "五十十", "零五零", "abc", ""):
        assert parse_number(text) is None, text


@pytest.mark.parametrize(("language", "itn", "expected"), [
    ("Chinese", True, "共1234元，占5%"),
    ("Chinese", False, "共一千二百三十四元，占百分之五"),
    ("English", True, "共一千二百三十四元，占百分之五"),
])  # fmt: skip
def test_files_are_normalised_when_chinese(tiny_models, monkeypatch, language, itn, expected):
    """The offline pipeline applies ITN to each segment and the whole text of a Chinese transcript only (the
    tiny random model's text stands in for a Chinese answer: its detokenizer is scripted)."""
    from qasr_live.config import EngineConfig
    from qasr_live.engine.encoder import AudioEncoder
    from qasr_live.engine.model_dir import open_model_dir
    from qasr_live.offline.pipeline import Transcriber

    model = open_model_dir(tiny_models["tied"], "fp32", "f32")
    t = Transcriber(
        model, EngineConfig(max_new_tokens=4, kv_cache_type="f32"), AudioEncoder(model.frontend, model.backend)
    )
    try:
        monkeypatch.setattr(t.decoder, "detokenize", lambda ids: "共一千二百三十四元，占百分之五")
        audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
        result = t.transcribe(audio, language=language, itn=itn)
    finally:
        t.close()
    assert result.text == expected and [s.text for s in result.segments] == [expected]
