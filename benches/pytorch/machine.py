"""Which CPU made a number: one description for every benchmark script.

`python3 machine.py` prints it (benches/device.sh's header)."""

import platform


def cpu_name():
    """The CPU that made a number, as Tessera's `tessera bench` names it: the
    model name, then family, model and the vector units that decide the kernels
    (a cloud guest's generic "Intel(R) Xeon(R) Processor" covers several
    generations, with and without AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n")[0]
    except OSError:
        return platform.processor() or "unknown"
    fields = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or "unknown"
    about = []
    if "cpu family" in fields and "model" in fields:
        about.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = fields.get("flags", "").split()
    units = [u for u in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if u in flags]
    if units:
        about.append(" ".join(units))
    return fields["model name"] + (f" ({'; '.join(about)})" if about else "")


if __name__ == "__main__":
    print(cpu_name())
