"""The grader of this example: `python grade.py run_N` scores run_N/submission.csv against private/test_labels.csv
and prints the metrics as a JSON object on its last line. A missing or malformed submission exits non-zero with
the reason on stderr. Standard library only, so any Python runs it; it reads nothing in data/, which runs can write."""

import csv
import json
import sys
from pathlib import Path


def read_labels(path: Path) -> dict[str, str]:
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows or [cell.strip().lower() for cell in rows[0][:2]] != ["id", "label"]:
        sys.exit(f"{path} must start with the header line id,label")
    return {row[0].strip(): row[1].strip() for row in rows[1:] if len(row) >= 2}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python grade.py run_N")
    submission = Path(sys.argv[1]) / "submission.csv"
    if not submission.is_file():
        sys.exit(f"no submission: {submission} is missing")
    answers = read_labels(Path(__file__).resolve().parent / "private" / "test_labels.csv")
    predicted = read_labels(submission)
    if missing := len(answers.keys() - predicted.keys()):
        sys.exit(f"{submission} has no prediction for {missing} of the {len(answers)} test ids")
    correct = sum(predicted[key] == label for key, label in answers.items())
    print(json.dumps({"test_accuracy": correct / len(answers)}))


if __name__ == "__main__":
    main()
