# Exam scores of three classes over five subjects as a grouped bar chart.
import numpy as np
import matplotlib.pyplot as plt

subjects = ["Math", "Physics", "Chemistry", "Biology", "History"]
scores = {"Class A": [78, 82, 69, 88, 74], "Class B": [85, 71, 77, 80, 90], "Class C": [66, 79, 84, 72, 81]}
x = np.arange(len(subjects))
width = 0.26
fig, ax = plt.subplots(figsize=(9, 5))
for i, (name, vals) in enumerate(scores.items()):
    bars = ax.bar(x + (i - 1) * width, vals, width, label=name)
    ax.bar_label(bars, padding=2, fontsize=8)
ax.set_xticks(x, subjects)
ax.set_ylabel("mean score")
ax.set_ylim(0, 100)
ax.set_title("Scores by subject and class")
ax.legend(ncols=3, loc="upper left")
plt.tight_layout()
plt.savefig("novice.png")
