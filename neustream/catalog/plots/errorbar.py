# Measurements with asymmetric error bars, a fitted line and its confidence band.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(4)
x = np.arange(1, 13)
y = 2.3 * x + 4 + rng.normal(0, 2, x.size)
lo, hi = rng.uniform(0.8, 2.5, (2, x.size))
coef = np.polyfit(x, y, 1)
fit = np.polyval(coef, x)
fig, ax = plt.subplots(figsize=(8, 5))
ax.errorbar(x, y, yerr=[lo, hi], fmt="o", capsize=4, color="darkred", label="measured")
ax.plot(x, fit, color="black", label=f"fit y = {coef[0]:.2f}x + {coef[1]:.2f}")
ax.fill_between(x, fit - 2, fit + 2, color="gray", alpha=0.2, label="+/- 2")
ax.set_xlabel("sample")
ax.set_ylabel("value")
ax.legend()
ax.set_title("Calibration run")
plt.savefig("novice.png")
