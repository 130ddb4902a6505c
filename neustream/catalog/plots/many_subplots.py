# Small multiples: 20 panels (4x5), each a noisy seasonal series with its trend and a shaded band.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(8)
t = np.arange(120)
fig, axs = plt.subplots(4, 5, figsize=(15, 10), sharex=True)
for k, ax in enumerate(axs.flat):
    season = np.sin(2 * np.pi * t / 12 + k)
    y = 0.02 * k * t + season + rng.normal(0, 0.4, t.size)
    trend = np.polyval(np.polyfit(t, y, 1), t)
    ax.plot(t, y, linewidth=0.8)
    ax.plot(t, trend, color="black", linewidth=1)
    ax.fill_between(t, trend - 1, trend + 1, alpha=0.2)
    ax.set_title(f"station {k + 1}", fontsize=8)
    ax.tick_params(labelsize=6)
fig.suptitle("Monthly readings, 20 stations")
fig.tight_layout()
plt.savefig("novice.png")
