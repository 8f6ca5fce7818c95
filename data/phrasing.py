"""The copy of generator version 2 (data/variety.py): the breadth of clean copy real ads have, and
many phrasings of each violation.

Version 1's clean copy was a product, a selling point, a price and a call to action, and no clean ad
ever held a character a violation uses, so a model could learn "a marker means reject". Real clean
ads are full of what looks like a violation to such a model: first-order offers (首单立减), discounts,
coupons, delivery promises, origins (云南产地直发), specs, seasonal offers, fan perks (粉丝福利), an
item sold separately (镜头另售). Here those are *hard negatives*: each violation has clean phrases
beside it that share its words or characters but make no claim the rules forbid, and a violation is
recognised by its whole phrase (`contains_trigger`), never by a single character.

Three phrasings: `train` (training and validation ads), `test` (held-out templates and phrases, as
in version 1) and `shifted` (the `test_shifted.jsonl` split: its own templates, registers and
phrasings, none used in training). Trigger phrases are heads x tails as in version 1; cells with
(i + 2j) % 7 == 0 are test-only and == 1 shifted-only, so every head and tail still occurs in
training; each category also has whole-sentence phrasings per split. Every character is in GB2312
(the tokenizer's vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phrasing:
    """One split's words. Slots: {p} product, {s} selling point (or the trigger), {o} offer, {f} fact
    (origin, spec, delivery), {cta} call to action. Offers and facts hold {n} {m} {d} numbers."""

    templates: tuple[str, ...]
    selling_points: tuple[str, ...]
    offers: tuple[str, ...]
    facts: tuple[str, ...]
    calls_to_action: tuple[str, ...]
    # clean phrases that share a violation's words (首单, 福利, 今晚, 低价出, 另售, 产地 ...): half of all
    # ads, whatever their label, hold one, so none of those words tells a violation apart
    hard_negatives: tuple[str, ...] = ()


PHRASING: dict[str, Phrasing] = {
    "train": Phrasing(
        templates=(
            "{p}，{s}，{o}，{cta}", "【{p}】{s}，{o}", "{s}的{p}，{f}，{o}", "新品{p}上市！{s}，{o}",
            "{p}限时特惠：{o}，{s}", "买{p}就选我们，{s}，{cta}", "{cta}！{p}{s}，{o}", "{p}｜{s}｜{f}",
            "今日推荐：{p}，{s}，{f}", "{p}热卖中，{o}，{cta}", "好物分享｜{p}，{s}，{f}", "{p}，{f}，{s}",
            "店长推荐{p}，{s}，{cta}", "{p}到货啦，{f}，{o}", "想要{p}？{s}，{o}", "{p}官方旗舰店，{s}，{f}",
            "家人们看过来，{p}{s}，{o}", "{p}：{f}；{s}；{o}", "{o}！{p}，{s}", "本店{p}{s}，{f}，{cta}",
            "{p}，{s}", "宝子们，这款{p}{s}，{o}冲", "{f}的{p}，{s}，{cta}", "{p}年货节：{o}，{f}",
        ),
        selling_points=(
            "品质保障", "做工精细", "颜值超高", "送礼佳选", "好评如潮", "售后无忧", "经典款式", "性价比高",
            "口碑之选", "用心设计", "精选材料", "简约大方", "轻松上手", "家人都爱", "实用耐看", "质量过硬",
            "款式新颖", "温和不刺激", "静音设计不扰睡眠", "老顾客回购多", "手感细腻", "颜色正", "结实耐用",
            "安心之选", "小巧便携", "拍照好看",
        ),
        offers=(
            "仅需{n}元", "到手价{n}元", "{n}元起", "低至{n}元", "首单立减{m}元", "满{n}减{m}", "领券再减{m}元",
            "全场{d}折", "第二件半价", "新人专享价{n}元", "下单返现{m}元", "积分抵现", "分期免息", "以旧换新",
            "粉丝福利价{n}元", "今晚8点开抢", "清仓低价出", "买二送一", "会员再享{d}折", "双十一预售{n}元",
            "中秋礼盒{n}元", "春季上新{d}折",
        ),
        facts=(
            "包邮到家", "现货速发", "送货上门", "顺丰包邮", "次日达", "产地直发", "云南产地", "原装进口",
            "七天无理由退货", "正品保真", "净含量{n}克", "{d}寸大屏", "支持以旧换新", "一年质保", "同城配送",
            "镜头另售", "私信咨询尺码", "扫码抽奖送好礼", "海外直邮",
        ),
        calls_to_action=("立即抢购", "点击购买", "快来下单", "马上咨询", "赶紧收藏", "欢迎到店", "先到先得",
                         "点击领取"),
        hard_negatives=("首单立减{m}元", "新人福利", "粉丝福利价{n}元", "今晚8点开抢", "清仓低价出", "镜头另售",
                        "私信咨询尺码", "扫码抽奖送好礼", "分期免息", "下单返现{m}元", "云南产地", "原装进口",
                        "好评率98%", "销量稳步上升", "安全材质", "深夜食堂同款", "静音设计不扰睡眠", "正品代发"),
    ),
    # Held out like version 1's test copy: new templates and new combinations of familiar words.
    "test": Phrasing(
        templates=(
            "{p}到店啦，{s}，{o}", "《{p}》{s}，{f}，{cta}", "{s}！{p}{o}", "推荐{p}，{s}，欢迎选购",
            "{p}：{s}；{f}", "{o}就能买到{p}，{s}", "为你精选{p}，{s}，{cta}", "{p}上新，{f}，{s}",
            "这款{p}，{s}，{o}", "{cta}→{p}，{s}", "周末好物：{p}，{s}，{f}", "{p}开售，{o}，{cta}",
            "{p}/{s}/{o}", "大家都说{p}好，{s}",
        ),
        selling_points=(
            "品质过硬", "售后保障", "设计简约", "颜值在线", "家人好评", "大方实用", "做工考究", "送礼实用",
            "质量保障", "经典耐看", "上手轻松", "温和亲肤", "回购率高",
        ),
        offers=("到手仅{n}元", "只需{n}元", "{n}元到手", "首单减{m}元", "满{n}元减{m}元", "新客领券减{m}",
                "限时{d}折", "第2件半价"),
        facts=("现货包邮", "产地发货", "进口原装", "七天退换", "当日发货", "正品保障"),
        calls_to_action=("立即购买", "快来抢购", "点击咨询", "马上下单", "欢迎收藏"),
        hard_negatives=("首单减{m}元", "粉丝专属福利", "今晚开抢", "配套镜头另售", "产地发货", "温和亲肤",
                        "私信问客服"),
    ),
    # The shifted split: registers, templates and phrases never used in training.
    "shifted": Phrasing(
        templates=(
            "亲，{p}{s}哦，{o}，{f}", "{p}~{s}。{o}，{cta}。", "{f}｜{p}｜{o}", "【限时】{p}{o}，{s}",
            "还在犹豫？{p}{s}，{o}", "{p}，{s}，{f}。", "直播间专享：{p}{o}，{s}", "{s}，{p}，{o}！",
            "本周上新{p}：{f}，{s}", "{p} {s} {o}", "尊敬的顾客：{p}{s}，{o}，{cta}", "{o}|{p}|{s}",
            "谁懂啊，{p}也太{s}了，{o}", "{p}现已开售，{f}，{cta}",
        ),
        selling_points=(
            "好用不贵", "细节满分", "耐看耐用", "送人有面子", "懂行的都买", "口碑稳定", "设计巧妙", "品质在线",
            "舒适安静", "好拿好放",
        ),
        offers=("新人首单{m}元", "满{n}立减{m}", "店铺券{m}元", "券后{n}元", "{d}折起", "加购享{d}折",
                "拍一发二", "粉丝专享{n}元", "晚8点开抢", "国庆特惠{n}元", "清库存低价出"),
        facts=("产地新疆", "源头工厂直供", "重量约{n}克", "全国包邮", "48小时发货", "保价30天", "配件另售",
               "私信领优惠", "支持货到付款"),
        calls_to_action=("戳链接购买", "冲鸭", "手慢无", "点我下单", "速来"),
        hard_negatives=("新人首单{m}元", "福利价{n}元", "晚8点开抢", "清库存低价出", "配件另售", "私信领优惠",
                        "产地新疆", "深夜也安静", "实物实拍"),
    ),
}

# Per category: (heads, tails) families; head + tail is a trigger phrase.
TRIGGER_FAMILIES: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = {
    "exaggeration": (
        (("全网", "全国", "行业", "史上", "全球", "同类", "本市"), ("最低价", "第一", "最好", "最强", "顶级", "最畅销", "销量冠军")),
        (("国家级", "世界级", "宇宙级", "顶尖级", "独家"), ("品质", "配方", "工艺", "口碑", "技术")),
        (("100%", "百分百", "保准", "绝对"), ("有效", "见效", "满意", "安全", "正宗")),
    ),
    "medical_claim": (
        (("治愈", "根治", "专治", "包治", "逆转", "三天治好"), ("高血压", "糖尿病", "癌症", "失眠", "脱发", "关节炎", "胃病")),
        (("降", "稳", "调节"), ("血压", "血糖", "血脂", "尿酸")),
    ),
    "financial_promise": (
        (("保本保息", "稳赚不赔", "零风险", "躺着赚钱", "无风险", "包赚"), ("年化收益15%", "月入过万", "日赚千元", "收益翻倍", "一年回本", "坐等升值")),
    ),
    "gambling": (
        (("真人", "澳门", "网上", "高赔率", "线上"), ("百家乐", "博彩", "下注", "赌场", "押注", "老虎机")),
    ),
    "vulgar": (
        (("性感", "寂寞", "深夜", "火辣", "今晚", "空虚"), ("撩人", "难耐", "约吗", "诱惑", "陪聊")),
    ),
    "prohibited_goods": (
        (("另售", "代购", "低价出", "私信购买", "顺带出", "渠道货"), ("电子烟", "仿真枪", "管制刀具", "处方药", "窃听器", "针孔摄像头")),
    ),
}

# Heads that make no claim on their own (全国包邮, 深夜也安静, 配件另售, 网上下单): the phrase they start
# is the violation, not the head. Real-copy rows (training/real_copy.py) put them bare into clean and
# violating copy alike, so a model cannot read a head alone, or one of its characters, as the violation.
# Left out: heads that are claims by themselves (extreme words such as 国家级 or 百分百, cures, sure
# returns, 高赔率, 渠道货), and one-character heads.
BARE_HEADS: tuple[str, ...] = (
    "全网", "全国", "行业", "史上", "全球", "同类", "本市", "真人", "澳门", "网上", "线上",
    "性感", "寂寞", "深夜", "火辣", "今晚", "空虚", "另售", "代购", "低价出", "私信购买", "顺带出",
)

# Whole-sentence phrasings, per split.
TRIGGER_SENTENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "exaggeration": {
        "train": ("买过的都说是最好的", "效果无人能比", "全国销量遥遥领先第一"),
        "test": ("没有比它更好的了", "品质天下第一"),
        "shifted": ("闭眼入的最强单品", "这是业界最好的一款"),
    },
    "medical_claim": {
        "train": ("喝了不再失眠", "吃完血糖就降了", "一个疗程根治脱发"),
        "test": ("三天告别失眠", "用了就能降血压"),
        "shifted": ("告别胃病不用吃药", "每天一杯治好关节炎"),
    },
    "financial_promise": {
        "train": ("买了稳赚不亏", "放着就能赚钱", "保证每年收益20%"),
        "test": ("包你回本还有赚", "收益看得见零风险"),
        "shifted": ("入手即赚，年年收益", "躺赚每月三千"),
    },
    "gambling": {
        "train": ("扫码进入赌场赢大奖", "在线押注天天赢"),
        "test": ("下注就送彩金", "老虎机免费玩"),
        "shifted": ("百家乐首充送百元", "博彩平台日日返水"),
    },
    "vulgar": {
        "train": ("寂寞的夜晚约吗", "深夜私密诱惑"),
        "test": ("今晚好寂寞来聊", "性感撩人等你来"),
        "shifted": ("火辣身材私聊约吗", "空虚寂寞来撩"),
    },
    "prohibited_goods": {
        "train": ("想要电子烟私信我", "处方药不用处方直接买"),
        "test": ("针孔摄像头包教包会", "仿真枪现货秒发"),
        "shifted": ("内部渠道出窃听器", "管制刀具顺丰发"),
    },
}


def _cells(families) -> dict[str, list[str]]:
    """Head i x tail j: test-only when (i + 2j) % 7 == 0, shifted-only when it is 1, else training."""
    cells: dict[str, list[str]] = {"train": [], "test": [], "shifted": []}
    for heads, tails in families:
        for i, head in enumerate(heads):
            for j, tail in enumerate(tails):
                cells[{0: "test", 1: "shifted"}.get((i + 2 * j) % 7, "train")].append(head + tail)
    return cells


def _triggers() -> dict[str, dict[str, tuple[str, ...]]]:
    triggers = {}
    for category, families in TRIGGER_FAMILIES.items():
        cells = _cells(families)
        triggers[category] = {split: tuple(cells[split]) + TRIGGER_SENTENCES[category][split] for split in cells}
    return triggers


TRIGGERS: dict[str, dict[str, tuple[str, ...]]] = _triggers()  # category -> phrasing -> phrases
ALL_TRIGGERS: dict[str, tuple[str, ...]] = {
    category: tuple(phrase for phrases in splits.values() for phrase in phrases)
    for category, splits in TRIGGERS.items()}


def contains_trigger(text: str) -> set[str]:
    """The categories one of whose trigger phrases (of any split) occurs in `text`."""
    return {category for category, phrases in ALL_TRIGGERS.items() if any(phrase in text for phrase in phrases)}
