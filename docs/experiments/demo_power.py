"""Power of the report's paired test for the demo's planted type (docs/demo_model.md, "Sizing").

pi_0 answers every count question "two", so it is right on a share r0 = 1/3 of them (counts 1-3
are equally likely). Suppose pi_T answers a share f of pi_0's wrong questions right (fixed) and
a share g of pi_0's right questions wrong (broken). On n questions the discordant count is
D ~ Binomial(n, pb + pc) with pb = (1 - r0) f, pc = r0 g, and the fixed ones B | D ~
Binomial(D, pb / (pb + pc)). The report calls a gain beyond noise when the two-sided exact
McNemar p < 0.05 and B > D - B (isrt.report.stats.mcnemar_exact). Power is computed exactly:

    power = sum_d P(D = d) sum_b P(B = b | d) [mcnemar_exact(b, d - b) < 0.05 and b > d - b]

Usage: python docs/experiments/demo_power.py   (prints the table in docs/demo_model.md)
"""
from math import comb

from isrt.report.stats import mcnemar_exact


def power(n: int, f: float, g: float, r0: float = 1 / 3, alpha: float = 0.05) -> float:
    pb, pc = (1 - r0) * f, r0 * g
    q = pb + pc
    if q == 0:
        return 0.0
    s = pb / q
    total = 0.0
    for d in range(n + 1):
        pd = comb(n, d) * q ** d * (1 - q) ** (n - d)
        for b in range(d // 2 + 1, d + 1):
            if mcnemar_exact(b, d - b) < alpha:
                total += pd * comb(d, b) * s ** b * (1 - s) ** (d - b)
    return total


def main() -> None:
    effects = [(0.10, 0.05), (0.20, 0.05), (0.20, 0.20), (0.30, 0.10)]
    print("| count questions | " + " | ".join(f"fixes {f:.0%}, breaks {g:.0%}" for f, g in effects) + " |")
    print("| --- |" + " --- |" * len(effects))
    for n in (24, 48, 96, 144, 192):
        print(f"| {n} | " + " | ".join(f"{power(n, f, g):.2f}" for f, g in effects) + " |")


if __name__ == "__main__":
    main()
