"""Writes EC_data/sample_emotions.csv: 63 Korean sentences over the seven emotions of the
emotion-classification datasets, labelled in English and in Korean, written for this project.
Run: python EC_data/make_sample_emotions.py
"""
import csv
from pathlib import Path

SENTENCES = {
    ("Neutral", "중립"): ["오늘 점심은 김밥을 먹었어요", "내일 회의는 오전 10시입니다", "버스가 조금 늦게 왔어",
                          "주말에 청소를 했다", "서점에 들러서 책을 샀어요", "지하철로 출근했어", "물을 한 잔 마셨다",
                          "이번 달 일정표를 정리했어요", "창문을 열어 두었어"],
    ("Surprise", "놀람"): ["갑자기 친구가 찾아와서 깜짝 놀랐어", "복권이 당첨됐다니 믿을 수가 없어", "벌써 12월이라고?",
                           "시험에 합격했대, 정말 의외야", "길에서 초등학교 동창을 만났어", "택배가 하루 만에 왔어요",
                           "그 사람이 결혼한다니 놀랍다", "정전이 돼서 깜짝 놀랐어요", "눈이 이렇게 많이 올 줄 몰랐어"],
    ("Angry", "분노"): ["약속을 또 어기다니 너무 화가 나", "새치기하는 사람 때문에 짜증나", "내 물건을 허락도 없이 썼어",
                        "층간 소음 때문에 잠을 못 잤어", "거짓말한 게 들통났는데 사과도 안 해", "주문한 음식이 한 시간째 안 와",
                        "회사에서 내 공을 가로챘어", "불친절한 직원 때문에 기분 나빴어요", "계속 무시당하니까 화가 치밀어"],
    ("Sadness", "슬픔"): ["키우던 강아지가 떠났어", "친구가 멀리 이사를 갔어요", "시험에 떨어져서 눈물이 나",
                          "헤어지고 나니 너무 허전해", "할머니가 보고 싶어요", "아무도 내 생일을 기억하지 못했어",
                          "혼자 밥 먹는 게 쓸쓸해", "열심히 했는데 결과가 안 좋아", "비 오는 날이면 괜히 우울해"],
    ("Fear", "공포"): ["밤길을 혼자 걷기가 무서워", "내일 발표 생각에 떨려요", "건강검진 결과가 걱정돼",
                       "높은 곳에 올라가면 다리가 떨려", "누가 따라오는 것 같아 무서웠어", "비행기 타는 게 두려워요",
                       "회사에서 잘릴까 봐 불안해", "천둥 소리에 잠이 깼어, 무서워", "혼자 있는 집에서 이상한 소리가 났어"],
    ("Disgust", "혐오"): ["길에 쓰레기를 버리는 사람을 봤어", "상한 우유 냄새가 역겨워", "남의 험담만 하는 사람이 싫어",
                          "식당 위생 상태가 너무 더러웠어", "벌레가 나와서 소름 돋았어", "침 뱉는 사람을 보면 불쾌해",
                          "거짓 광고에 속았다니 기분 나빠", "담배 연기가 너무 싫어요", "뒷정리 안 하는 룸메이트가 싫다"],
    ("Happiness", "행복"): ["오늘 고백을 받았어요", "가족이랑 여행 가서 행복했어", "월급이 올랐어!", "오랜만에 푹 잤어요",
                            "친구들이 깜짝 파티를 해 줬어", "맛있는 케이크를 먹었다", "시험 잘 봐서 기분 최고야",
                            "강아지랑 산책하니까 좋다", "좋아하는 사람이랑 데이트했어"],
}


def main(path=Path(__file__).with_name("sample_emotions.csv")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Sentence", "Emotion"])
        for (english, korean), sentences in SENTENCES.items():
            for i, sentence in enumerate(sentences):
                writer.writerow([sentence, english if i % 2 == 0 else korean])  # both label languages
    return path


if __name__ == "__main__":
    print(main())
