"""Shell completion scripts generated from the argparse tree (bash, zsh, fish, powershell)."""

from __future__ import annotations

import argparse


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(opt for a in parser._actions for opt in a.option_strings if opt.startswith("--"))


def tree(parser: argparse.ArgumentParser) -> dict[str, tuple[list[str], list[str]]]:
    """command path -> (sub-commands, options)."""
    out: dict[str, tuple[list[str], list[str]]] = {}

    def walk(path: str, node: argparse.ArgumentParser) -> None:
        subs = _subparsers(node)
        out[path] = (sorted(subs), _options(node))
        for name, child in subs.items():
            walk(f"{path} {name}".strip(), child)

    walk("", parser)
    return out


def render(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = tree(parser)
    if shell == "bash":
        cases = "\n".join(
            f'        "{path}") words="{" ".join(subs + opts)}" ;;'
            for path, (subs, opts) in commands.items()
        )
        return f"""# bash completion for coi (source it, or put it in /etc/bash_completion.d/coi)
_coi() {{
    local cur path="" i words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) path="${{path:+$path }}${{COMP_WORDS[i]}}" ;; esac
    done
    while true; do
        case "$path" in
{cases}
        *) if [[ "$path" == *" "* ]]; then path="${{path% *}}"; continue; fi; words="" ;;
        esac
        break
    done
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _coi coi
"""
    if shell == "zsh":
        top, _ = commands[""]
        return (
            "#compdef coi\n# zsh completion for coi, through bashcompinit\n"
            "autoload -U +X bashcompinit && bashcompinit\n"
            + render(parser, "bash")
            + f"# top-level commands: {' '.join(top)}\n"
        )
    if shell == "powershell":
        return _powershell(commands)
    lines = ["# fish completion for coi", "complete -c coi -f"]
    top, _top_opts = commands[""]
    for name in top:
        lines.append(f"complete -c coi -n '__fish_use_subcommand' -a {name}")
    for path, (subs, opts) in commands.items():
        if not path:
            continue
        words = path.split()
        cond = " && ".join(f"__fish_seen_subcommand_from {w}" for w in words)
        for sub in subs:
            lines.append(f"complete -c coi -n '{cond}' -a {sub}")
        for opt in opts:
            lines.append(f"complete -c coi -n '{cond}' -l {opt[2:]}")
    return "\n".join(lines) + "\n"


def _powershell(commands: dict[str, tuple[list[str], list[str]]]) -> str:
    """A native argument completer: the command path typed so far (words that are not flags)
    picks the candidates, falling back to the longest known parent path, as the bash one does."""
    table = "\n".join(
        f"    '{path}' = @({', '.join(repr(word) for word in subs + opts)})"
        for path, (subs, opts) in commands.items()
    )
    return f"""# powershell completion for coi; in $PROFILE:
#   coi completion powershell | Out-String | Invoke-Expression
$__coiWords = @{{
{table}
}}
Register-ArgumentCompleter -Native -CommandName coi -ScriptBlock {{
    param($wordToComplete, $commandAst, $cursorPosition)
    $path = @()
    foreach ($element in $commandAst.CommandElements | Select-Object -Skip 1) {{
        $text = $element.ToString()
        $atCursor = $element.Extent.EndOffset -ge $cursorPosition
        if ($atCursor -and $text -eq $wordToComplete) {{ break }}
        if (-not $text.StartsWith('-')) {{ $path += $text }}
    }}
    $key = $path -join ' '
    while ($key -ne '' -and -not $__coiWords.ContainsKey($key)) {{
        $key = if ($key.Contains(' ')) {{ $key.Substring(0, $key.LastIndexOf(' ')) }} else {{ '' }}
    }}
    $__coiWords[$key] | Where-Object {{ $_ -like "$wordToComplete*" }} | ForEach-Object {{
        [System.Management.Automation.CompletionResult]::new($_, $_, 'ParameterValue', $_)
    }}
}}
"""
