# Traffic by channel over a year as a stacked area chart.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(5)
days = np.arange(365)
channels = ["search", "social", "direct", "email"]
base = [400, 250, 150, 80]
series = [np.clip(b * (1 + 0.3 * np.sin(2 * np.pi * (days + 30 * i) / 365)) + rng.normal(0, b * 0.08, 365), 0, None)
          for i, b in enumerate(base)]
fig, ax = plt.subplots(figsize=(10, 5))
ax.stackplot(days, *series, labels=channels, alpha=0.85)
ax.set_xlim(0, 364)
ax.set_xlabel("day of year")
ax.set_ylabel("visits per day")
ax.set_title("Visits by channel")
ax.legend(loc="upper left", ncols=4)
plt.savefig("novice.png")
