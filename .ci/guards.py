#!/usr/bin/env python3
"""What rustfmt and clippy cannot see, checked over the tracked files.

1. No `.rs` line over 120 characters (rustfmt does not reach inside macros
   such as `json!` and `proptest!`).
2. Every `unsafe { .. }` block has a `// SAFETY:` comment directly above it
   (on the comment lines right before its line).
3. Every `pub unsafe fn` (any `pub` visibility) has a `# Safety` section in
   its doc comment.
4. Every file path and every `Type::member` that README.md and docs/ name in
   backticks (and every relative link) exists in the tree: a file at that
   path (from the repository, the document's folder, or as the end of a
   tracked path), and a member (method, function, constant, variant, field)
   of a type defined in the workspace.

`python3 .ci/guards.py` checks the repository and exits 1 listing what it
found; `python3 .ci/guards.py --self-test` plants one violation of each kind
in a scratch copy of a few files and checks that each guard catches it.
"""

import os
import re
import subprocess
import sys
import tempfile

MAX_LINE = 120


def tracked(root, *patterns):
    out = subprocess.check_output(["git", "ls-files", *patterns], cwd=root, text=True)
    return [p for p in out.split("\n") if p]


def strip_comment(line):
    """The code of a line: without a `//` comment (strings are not parsed;
    the lines this is used on do not hold `//` inside a string)."""
    i = line.find("//")
    return line if i < 0 else line[:i]


# ---------------------------------------------------------------- 1. long lines


def long_lines(root, files):
    found = []
    for f in files:
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if len(line.rstrip("\n")) > MAX_LINE:
                    found.append(f"{f}:{n}: line of {len(line.rstrip())} characters (over {MAX_LINE})")
    return found


# ---------------------------------------------------------------- 2. SAFETY comments

UNSAFE_BLOCK = re.compile(r"\bunsafe\s*\{")


def comment_above(lines, i):
    """The comment lines directly above line i (attributes in between are
    skipped, as in a `#[cfg]` match arm), nearest first."""
    out = []
    j = i - 1
    while j >= 0:
        s = lines[j].strip()
        if s.startswith("//"):
            out.append(s)
        elif s.startswith("#[") and not out:
            pass
        else:
            break
        j -= 1
    return out


def unsafe_without_safety(root, files):
    found = []
    for f in files:
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        for i, line in enumerate(lines):
            code = strip_comment(line)
            for m in UNSAFE_BLOCK.finditer(code):
                # The comment may also stand on the same line, before the block.
                before = line[: m.start()]
                same = "// SAFETY" in line[: m.start()] if "//" in before else False
                above = comment_above(lines, i)
                if not same and not any(c.startswith("// SAFETY") for c in above):
                    found.append(f"{f}:{i + 1}: unsafe block without a `// SAFETY:` comment directly above it")
    return found


# ---------------------------------------------------------------- 3. # Safety docs

PUB_UNSAFE_FN = re.compile(r"^\s*pub(\([a-z]+\))?\s+unsafe\s+fn\s+(\w+)")


def pub_unsafe_without_safety_doc(root, files):
    found = []
    for f in files:
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        for i, line in enumerate(lines):
            m = PUB_UNSAFE_FN.match(line)
            if not m:
                continue
            doc = []
            j = i - 1
            while j >= 0:
                s = lines[j].strip()
                if s.startswith("///") or s.startswith("#["):
                    doc.append(s)
                    j -= 1
                    continue
                break
            if not any(re.match(r"///\s*# Safety\b", d) for d in doc):
                found.append(f"{f}:{i + 1}: `{m.group(0).strip()}` has no `# Safety` section in its docs")
    return found


# ---------------------------------------------------------------- 4. docs name what exists

# Types of the standard library and of dependencies that the docs may name.
EXTERNAL_TYPES = {
    "Arc", "Box", "BTreeMap", "Cell", "Duration", "HashMap", "Instant", "Mutex", "Option",
    "Ordering", "Path", "PathBuf", "Rc", "RefCell", "Result", "String", "Vec", "OnceLock",
    "ThreadPoolBuilder", "SafeTensors", "RgbImage", "ProgressBar", "Criterion", "Throughput",
}

# Files of the upstream code (MAE's, SimMIM's, timm's) that the docs cite.
UPSTREAM_FILES = {"models_mae.py", "main_finetune.py", "main_pretrain.py", "models_vit.py", "engine_pretrain.py"}

FILE_EXT = r"(?:rs|md|py|sh|toml|json|jsonl|png|safetensors|txt|yml|yaml|csv)"
PATH_RE = re.compile(r"^[A-Za-z0-9_.\-/{}*]+\." + FILE_EXT + r"$")
MEMBER_RE = re.compile(r"(?<![\w:])([A-Z][A-Za-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)")


def rust_items(root, rs_files):
    """Types defined in the workspace and the members each has: methods and
    associated items of its impl blocks (trait impls included), variants of
    an enum, fields of a struct, methods of a trait."""
    types = {}

    def add(t, name):
        types.setdefault(t, set()).add(name)

    for f in rs_files:
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            src = fh.read()
        code = re.sub(r"//[^\n]*", "", src)
        for m in re.finditer(r"\b(?:struct|enum|trait|type|union)\s+([A-Z]\w*)", code):
            types.setdefault(m.group(1), set())
        for m in re.finditer(
            r"\b(impl|enum|struct|trait)\b([^{;]*?)\{", code
        ):
            kind, head = m.group(1), m.group(2)
            if kind == "impl":
                target = head.split(" for ")[-1] if " for " in head else head
                target = re.sub(r"<.*", "", re.sub(r"^\s*(<[^>]*>)?\s*", "", target)).strip()
                name = target.split("::")[-1].strip()
            else:
                nm = re.match(r"\s*([A-Z]\w*)", head)
                if not nm:
                    continue
                name = nm.group(1)
            # The block, by brace matching.
            depth, k = 0, m.end() - 1
            while k < len(code):
                if code[k] == "{":
                    depth += 1
                elif code[k] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            body = code[m.end(): k]
            if kind in ("impl", "trait"):
                for fm in re.finditer(r"\b(?:fn|const|type)\s+(\w+)", body):
                    add(name, fm.group(1))
            elif kind == "enum":
                # Variants: names at the block's top level followed by `,`,
                # `{`, `(`, `=` or the end (attributes' brackets skipped).
                d = 0
                for tok in re.finditer(r"[{}()\[\]]|\b[A-Z]\w*\b", body):
                    t = tok.group(0)
                    if t in "{([":
                        d += 1
                    elif t in "})]":
                        d -= 1
                    elif d == 0 and re.match(r"\s*([,{(=]|$)", body[tok.end():]):
                        add(name, t)
            elif kind == "struct":
                for fm in re.finditer(r"\b(?:pub(?:\([a-z]+\))?\s+)?(\w+)\s*:", body):
                    add(name, fm.group(1))
    return types


CRATES = {"tessera_kernels": "crates/kernels/src", "tessera_tensor": "crates/tensor/src", "tessera_mim": "crates/mim/src"}
MODULE_PATH_RE = re.compile(r"^(?:(tessera_\w+|crate)::)?((?:[a-z_][a-z0-9_]*::)+)([A-Za-z_][A-Za-z0-9_]*)$")


def module_file(root, src, mods):
    """The file of module `mods` under crate folder `src`, if any."""
    if not mods:
        return os.path.join(root, src, "lib.rs")
    base = os.path.join(root, src, *mods)
    for f in (base + ".rs", os.path.join(base, "mod.rs")):
        if os.path.exists(f):
            return f
    return None


def path_item_exists(root, value):
    """`run::pretrain::PretrainRun`, `tessera_kernels::gemm::bf16`,
    `data::loader::load_batch`: the modules exist in one of the crates (any,
    when the path names none), and the last segment is a module of it or an
    item it defines or re-exports."""
    segs = value.split("::")
    krate = segs[0] if segs[0] in CRATES or segs[0] == "crate" else None
    mods, last = segs[1 if krate else 0 : -1], segs[-1]
    external = ("std", "core", "rayon", "torch", "timm", "safetensors", "criterion", "clap", "matrixmultiply")
    if krate is None and mods and mods[0] in external:
        return True
    srcs = [CRATES[krate]] if krate in CRATES else list(CRATES.values())
    if krate in CRATES and not mods:
        srcs = [CRATES[krate]]
    for src in srcs:
        f = module_file(root, src, mods)
        if f is None:
            continue
        if module_file(root, src, mods + [last]):
            return True
        with open(f, encoding="utf-8") as fh:
            code = fh.read()
        item = r"\b(?:fn|struct|enum|trait|type|const|static|mod|macro_rules!)\s+" + re.escape(last) + r"\b"
        if re.search(item, code) or re.search(r"\buse [^;]*\b" + re.escape(last) + r"\b[^;]*;", code):
            return True
    return False


def doc_references(text):
    """(kind, value) of what a markdown text names: backticked paths and
    members, and relative link targets."""
    refs = []
    # Fenced code blocks are examples, not references.
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for m in re.finditer(r"`([^`\n]+)`", prose):
        s = m.group(1).strip()
        # A path with folders, or a bare source file name; placeholders
        # (`OUT/…`, `step-NNNNNN.png`) and the files a run writes are not
        # paths of the tree.
        if PATH_RE.match(s) and ("/" in s or re.search(r"\.(rs|py|sh)$", s)):
            placeholder = any(seg.isupper() or "NNN" in seg for seg in re.split(r"[/.]", s))
            if not placeholder and s not in UPSTREAM_FILES:
                refs.append(("path", s))
        for mm in MEMBER_RE.finditer(s):
            refs.append(("member", f"{mm.group(1)}::{mm.group(2)}"))
        for word in re.findall(r"[\w:]+(?![\w:{])", s):
            if "::" in word and MODULE_PATH_RE.match(word) and not word.endswith("_"):
                refs.append(("item", word))
    for m in re.finditer(r"\]\(([^)\s]+)\)", prose):
        target = m.group(1).split("#")[0]
        if target and not re.match(r"^[a-z]+:", target):
            refs.append(("link", target))
    return refs


def path_exists(root, doc, p, all_files):
    p = p.rstrip("/")
    if any(ch in p for ch in "{}*"):
        return True  # a pattern (`data_batch_{1..5}.bin`), not one file
    if os.path.exists(os.path.join(root, p)) or os.path.exists(os.path.join(root, os.path.dirname(doc), p)):
        return True
    return any(f == p or f.endswith("/" + p) for f in all_files)


def missing_references(root, docs, rs_files):
    all_files = tracked(root)
    types = rust_items(root, rs_files)
    found = []
    for doc in docs:
        with open(os.path.join(root, doc), encoding="utf-8") as fh:
            text = fh.read()
        for kind, value in doc_references(text):
            if kind in ("path", "link"):
                if not path_exists(root, doc, value, all_files):
                    found.append(f"{doc}: names {value}, which is not in the tree")
            elif kind == "item":
                if not path_item_exists(root, value):
                    found.append(f"{doc}: names {value}, which no module of the workspace defines")
            else:
                t, member = value.split("::")
                if t in EXTERNAL_TYPES:
                    continue
                if t not in types:
                    found.append(f"{doc}: names {value}, but no type {t} is defined in the workspace")
                elif member not in types[t]:
                    found.append(f"{doc}: names {value}, but {t} has no {member}")
    return sorted(set(found))


# ---------------------------------------------------------------- main


def check(root):
    rs = tracked(root, "*.rs")
    docs = [d for d in tracked(root, "README.md", "docs/*.md")]
    problems = []
    for name, found in [
        ("lines over 120 characters", long_lines(root, rs)),
        ("unsafe blocks without SAFETY comments", unsafe_without_safety(root, rs)),
        ("pub unsafe fns without # Safety docs", pub_unsafe_without_safety_doc(root, rs)),
        ("docs naming what does not exist", missing_references(root, docs, rs)),
    ]:
        if found:
            problems.append(f"{name}:\n  " + "\n  ".join(found))
    return problems


def self_test(root):
    """Plants one violation of each kind in a scratch repository and checks
    that each guard catches it, and that the clean scratch passes."""
    with tempfile.TemporaryDirectory() as d:
        def git(*a):
            subprocess.run(["git", *a], cwd=d, check=True, capture_output=True)

        git("init", "-q")
        os.makedirs(os.path.join(d, "src"))
        os.makedirs(os.path.join(d, "docs"))
        clean_rs = (
            "pub struct Kernel;\n"
            "impl Kernel {\n"
            "    pub fn run(&self) {}\n"
            "}\n"
            "/// Runs it.\n"
            "///\n"
            "/// # Safety\n"
            "/// The CPU has AVX2.\n"
            "pub unsafe fn fast() {}\n"
            "fn f() {\n"
            "    // SAFETY: the CPU has AVX2.\n"
            "    unsafe { fast() };\n"
            "}\n"
        )
        clean_md = "See `src/lib.rs` and `Kernel::run`, and [the readme](../README.md).\n"
        files = {"src/lib.rs": clean_rs, "docs/a.md": clean_md, "README.md": "Tessera.\n"}

        def write_all(fs):
            for p, t in fs.items():
                with open(os.path.join(d, p), "w", encoding="utf-8") as fh:
                    fh.write(t)
            git("add", "-A")

        write_all(files)
        assert check(d) == [], f"the clean scratch fails: {check(d)}"
        plants = {
            "lines over 120": {"src/lib.rs": clean_rs + "// " + "x" * 130 + "\n"},
            "without SAFETY": {"src/lib.rs": clean_rs + "fn g() {\n    unsafe { fast() };\n}\n"},
            "without # Safety": {"src/lib.rs": clean_rs + "/// Undocumented.\npub unsafe fn other() {}\n"},
            "naming what does not exist (path)": {"docs/a.md": clean_md + "And `src/gone.rs`.\n"},
            "naming what does not exist (member)": {"docs/a.md": clean_md + "And `Kernel::walk`.\n"},
            "names (item)": {"docs/a.md": clean_md + "And `tessera_mim::run::gone::Thing`.\n"},
        }
        for what, change in plants.items():
            write_all(change)
            problems = check(d)
            key = what.split(" (")[0]
            assert any(key in p for p in problems), f"a planted violation ({what}) was not caught: {problems}"
            write_all(files)
        print(f"guards self-test: each of {len(plants)} planted violations caught; the clean scratch passes")


def main():
    root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
    if "--self-test" in sys.argv:
        self_test(root)
        return 0
    problems = check(root)
    if problems:
        print("\n".join(problems))
        return 1
    print("guards: line lengths, SAFETY comments, # Safety docs and doc references are in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
