# data: monthly_sales.csv
# Monthly sales of three product lines read from a CSV, with a 3-month moving average and a peak marker.
import csv
import numpy as np
import matplotlib.pyplot as plt

with open("monthly_sales.csv") as f:
    rows = list(csv.DictReader(f))
months = [r["month"] for r in rows]
fig, ax = plt.subplots(figsize=(11, 5))
for name in ["widgets", "gadgets", "gizmos"]:
    v = np.array([float(r[name]) for r in rows])
    line, = ax.plot(range(len(v)), v, marker="o", markersize=3, label=name)
    avg = np.convolve(v, np.ones(3) / 3, mode="valid")
    ax.plot(range(1, len(v) - 1), avg, color=line.get_color(), alpha=0.5, linewidth=3)
    k = int(v.argmax())
    ax.annotate(f"peak {v[k]:.0f}", (k, v[k]), xytext=(0, 10), textcoords="offset points", ha="center")
ax.set_xticks(range(0, len(months), 3), months[::3], rotation=45)
ax.set_ylabel("units sold")
ax.set_title("Monthly sales by product line")
ax.legend()
plt.tight_layout()
plt.savefig("novice.png")
