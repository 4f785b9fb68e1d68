"""The grader of this example: `python grade.py run_N` scores run_N/submission.csv against private/test_labels.csv
and prints the metrics as a JSON object on its last line. A missing or malformed submission exits with code 2 and
the reason on stderr: the run failed, not the grader. Standard library only, so any Python runs it; it reads nothing
in data/, which runs can write."""

import csv
import json
import sys
from pathlib import Path

REJECTED = 2
"""The exit code that tells the runner the submission is at fault (the run failed), not this grader."""


def reject(reason: str) -> None:
    print(reason, file=sys.stderr)
    sys.exit(REJECTED)


def read_labels(path: Path) -> dict[str, str]:
    """id -> label from a CSV with the header line id,label; ValueError when it is not one."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} cannot be read as CSV ({type(exc).__name__})") from None
    if not rows or [cell.strip().lower() for cell in rows[0][:2]] != ["id", "label"]:
        raise ValueError(f"{path} must start with the header line id,label")
    return {row[0].strip(): row[1].strip() for row in rows[1:] if len(row) >= 2}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python grade.py run_N")
    submission = Path(sys.argv[1]) / "submission.csv"
    if not submission.is_file():
        reject(f"no submission: {submission} is missing")
    answers = read_labels(Path(__file__).resolve().parent / "private" / "test_labels.csv")  # a bad answer key is this grader's fault
    try:
        predicted = read_labels(submission)
    except ValueError as exc:
        reject(str(exc))
    if missing := len(answers.keys() - predicted.keys()):
        reject(f"{submission} has no prediction for {missing} of the {len(answers)} test ids")
    correct = sum(predicted[key] == label for key, label in answers.items())
    print(json.dumps({"test_accuracy": correct / len(answers)}))


if __name__ == "__main__":
    main()
