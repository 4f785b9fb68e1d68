"""Write this example's data from scikit-learn's bundled digits (no download): data/train.csv, data/test.csv without
labels, and private/test_labels.csv, which only grade.py reads. Run it once from this folder: python prepare.py"""

import csv
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
PIXELS = [f"p{i}" for i in range(64)]


def write(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    images, labels = load_digits(return_X_y=True)
    ids = list(range(len(labels)))
    train_ids, test_ids = train_test_split(ids, test_size=0.25, random_state=7, stratify=labels)
    pixels = {i: [int(v) for v in images[i]] for i in ids}
    write(HERE / "data" / "train.csv", ["id", *PIXELS, "label"], [[i, *pixels[i], int(labels[i])] for i in train_ids])
    write(HERE / "data" / "test.csv", ["id", *PIXELS], [[i, *pixels[i]] for i in test_ids])
    write(HERE / "private" / "test_labels.csv", ["id", "label"], [[i, int(labels[i])] for i in test_ids])
    print(f"data/train.csv: {len(train_ids)} rows; data/test.csv: {len(test_ids)} rows; private/test_labels.csv: the answers")


if __name__ == "__main__":
    main()
