# Damped oscillations: three line series with legend, grid and axis labels.
import numpy as np
import matplotlib.pyplot as plt

t = np.linspace(0, 10, 500)
fig, ax = plt.subplots(figsize=(8, 5))
for zeta, style in [(0.05, "-"), (0.2, "--"), (0.5, ":")]:
    ax.plot(t, np.exp(-zeta * t) * np.cos(2 * t), style, linewidth=2, label=f"damping {zeta}")
ax.axhline(0, color="gray", linewidth=0.8)
ax.set_xlabel("time (s)")
ax.set_ylabel("displacement")
ax.set_title("Damped oscillator response")
ax.legend(loc="upper right")
ax.grid(True, alpha=0.3)
plt.tight_layout()
plt.savefig("novice.png")
