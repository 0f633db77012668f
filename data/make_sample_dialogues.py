"""Writes data/sample_dialogues.csv: small Korean multi-turn conversations written for this project.

The layout of the public emotional-conversation corpus (감성대화 말뭉치): one conversation a row,
up to three turns in 사람문장1, 시스템문장1, 사람문장2, 시스템문장2, 사람문장3, 시스템문장3, and the
emotion in 감정_대분류 (기쁨, 당황, 분노, 불안, 상처, 슬픔). Later answers name what the person said
in the first turn, so a model has to read the conversation to answer them well. It exists so
the conversation commands can be tried with no download; train on real data for a real bot.
Run: python data/make_sample_dialogues.py
"""
import csv
import re
from pathlib import Path

# (emotion, things said in turn 1, the three turns with {x} for the thing)
TEMPLATES = [
    ("기쁨", ["시험에 합격", "승진", "대회에서 우승", "취업에 성공", "자격증 시험에 합격", "마라톤 완주", "내 집 마련", "공모전에서 입상"], [
        ("나 오늘 {x}했어!", "정말 축하해요! {x}하다니 대단해요."),
        ("고마워. 너무 기뻐.", "{x}한 기쁨을 마음껏 누리세요."),
        ("가족한테도 말해야겠다.", "가족들도 {x}했다는 소식에 기뻐할 거예요."),
    ]),
    ("기쁨", ["강아지", "고양이", "앵무새", "토끼", "거북이", "햄스터", "고슴도치", "금붕어"], [
        ("오늘 {x}[을/를] 입양했어.", "{x}[이라니/라니] 정말 귀엽겠어요!"),
        ("이름을 뭐로 지을까?", "{x}에게 어울리는 예쁜 이름을 지어 주세요."),
        ("잘 키울 수 있을까?", "사랑으로 돌보면 {x}도 행복할 거예요."),
    ]),
    ("슬픔", ["할머니", "할아버지", "강아지", "고양이", "친구", "엄마", "아빠", "동생"], [
        ("{x}[이/가] 많이 아파.", "{x}[이/가] 아프다니 걱정이 많겠어요."),
        ("아무것도 손에 안 잡혀.", "{x} 생각에 마음이 무거운 게 당연해요."),
        ("내가 해 줄 수 있는 게 없어.", "곁에 있어 주는 것만으로도 {x}에게 큰 힘이 돼요."),
    ]),
    ("불안", ["면접", "발표", "시험", "수술", "운전면허 시험", "오디션", "건강검진", "첫 출근"], [
        ("내일 {x}[이/가] 있어서 떨려.", "{x}[을/를] 앞두고 긴장되는 건 자연스러워요."),
        ("잘할 수 있을까?", "준비한 만큼 {x}에서 잘할 수 있을 거예요."),
        ("잠이 안 올 것 같아.", "{x} 전날엔 푹 자는 게 제일 중요해요."),
    ]),
    ("분노", ["동생", "팀장님", "친구", "옆집 사람", "룸메이트", "사장님", "형", "택배 기사"], [
        ("{x} 때문에 너무 화가 나.", "{x} 때문에 속상했군요."),
        ("매번 이런 식이야.", "{x}[이/가] 계속 그러면 정말 답답하겠어요."),
        ("어떻게 말해야 할까?", "{x}에게 차분하게 마음을 전해 보세요."),
    ]),
    ("상처", ["친구", "선배", "애인", "동료", "언니", "후배", "사촌", "오빠"], [
        ("{x}[이/가] 내 뒷담화를 했대.", "{x}에게 그런 말을 듣다니 상처가 컸겠어요."),
        ("믿었는데 배신감이 들어.", "믿었던 {x}[이라서/라서] 더 아프겠어요."),
        ("다시 볼 자신이 없어.", "{x}[과는/와는] 잠시 거리를 두어도 괜찮아요."),
    ]),
    ("당황", ["지갑", "휴대폰", "열쇠", "우산", "가방", "이어폰", "신분증", "노트북"], [
        ("{x}[을/를] 잃어버렸어.", "{x}[을/를] 잃어버리다니 당황스럽겠어요."),
        ("어디서 잃어버렸는지 모르겠어.", "마지막으로 {x}[을/를] 본 곳부터 찾아보세요."),
        ("찾을 수 있겠지?", "분실물 센터에 {x}[이/가] 있을지도 몰라요."),
    ]),
]
# Conversations of one, two and three turns, so every length is represented.
LENGTHS = (3, 2, 3, 1, 3)


def josa(text: str) -> str:
    """Resolve [이/가]-style particle choices by whether the syllable before has a final consonant."""
    def pick(match):
        before = match.group(1)
        has_final = "가" <= before <= "힣" and (ord(before) - 0xAC00) % 28 != 0
        return before + (match.group(2) if has_final else match.group(3))

    return re.sub(r"(.)\[([^/\]]+)/([^\]]+)\]", pick, text)


def main():
    out = Path(__file__).with_name("sample_dialogues.csv")
    header = ["사람문장1", "시스템문장1", "사람문장2", "시스템문장2", "사람문장3", "시스템문장3", "감정_대분류"]
    rows = []
    for emotion, things, turns in TEMPLATES:
        for i, thing in enumerate(things):
            n = LENGTHS[i % len(LENGTHS)]
            cells = []
            for q, a in turns[:n]:
                cells += [josa(q.format(x=thing)), josa(a.format(x=thing))]
            rows.append(cells + [""] * (6 - len(cells)) + [emotion])
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {out}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
