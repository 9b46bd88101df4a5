# moxflow: the Rust toolchain through rustup in a machine-wide CARGO_HOME/RUSTUP_HOME:
# rustup itself, the default and extra toolchains, components of the default toolchain.
# stdin: {"cargo_home", "rustup_home", "default_toolchain", "toolchains": [], "components": []}
# stdout: {items: [{item, status, detail}]}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
$env:CARGO_HOME = [string]$in.cargo_home
$env:RUSTUP_HOME = [string]$in.rustup_home
[Environment]::SetEnvironmentVariable('CARGO_HOME', $env:CARGO_HOME, 'Machine')
[Environment]::SetEnvironmentVariable('RUSTUP_HOME', $env:RUSTUP_HOME, 'Machine')
$default = [string]$in.default_toolchain
$rustup = Join-Path $env:CARGO_HOME 'bin\rustup.exe'
$items = @()
$fresh = $false  # rustup-init installs the default toolchain and makes it the default
function Item($name, $status, $detail) { [ordered]@{ item = $name; status = $status; detail = [string]$detail } }
function Run([string]$exe, [string[]]$argv) {
    # PowerShell 5.1 turns a native program's stderr line into a terminating error under
    # 'Stop', and rustup writes its progress there
    $ErrorActionPreference = 'Continue'
    $text = (@(& $exe @argv 2>&1 | ForEach-Object { [string]$_ }) -join "`n").Trim()
    [pscustomobject]@{ code = $LASTEXITCODE; text = $text }
}
if (Test-Path -LiteralPath $rustup) { $items += Item 'rustup' 'present' '' } else {
    try {
        $init = Join-Path $env:TEMP 'moxflow-rustup-init.exe'
        Invoke-WebRequest -UseBasicParsing -Uri 'https://static.rust-lang.org/rustup/dist/x86_64-pc-windows-msvc/rustup-init.exe' -OutFile $init
        $r = Run $init @('-y', '--default-toolchain', $default, '--profile', 'minimal', '--default-host', 'x86_64-pc-windows-msvc', '--no-modify-path')
        if ($r.code -eq 0) { $items += Item 'rustup' 'installed' ''; $fresh = $true } else { $items += Item 'rustup' 'failed' $r.text }
    } catch { $items += Item 'rustup' 'failed' $_.Exception.Message }
}
if (Test-Path -LiteralPath $rustup) {
    $have = @((Run $rustup @('toolchain', 'list')).text -split "`n")
    foreach ($t in @(@($default) + @($in.toolchains) | Select-Object -Unique)) {
        $name = 'toolchain:' + $t
        if (@($have | Where-Object { $_ -eq $t -or $_.StartsWith($t + '-') -or $_.StartsWith($t + ' ') }).Count -gt 0) {
            if ($fresh -and $t -eq $default) { $items += Item $name 'installed' 'with rustup' } else { $items += Item $name 'present' '' }
            continue
        }
        $r = Run $rustup @('toolchain', 'install', $t, '--profile', 'minimal')
        if ($r.code -eq 0) { $items += Item $name 'installed' '' } else { $items += Item $name 'failed' $r.text }
    }
    $current = (Run $rustup @('default')).text
    if ($current -ne $default -and -not $current.StartsWith($default + '-') -and -not $current.StartsWith($default + ' ')) {
        $r = Run $rustup @('default', $default)
        if ($r.code -eq 0) { $items += Item ('default:' + $default) 'updated' $current } else { $items += Item ('default:' + $default) 'failed' $r.text }
    } elseif ($fresh) { $items += Item ('default:' + $default) 'installed' 'with rustup' } else { $items += Item ('default:' + $default) 'present' '' }
    $installed = @((Run $rustup @('component', 'list', '--installed', '--toolchain', $default)).text -split "`n")
    foreach ($c in $in.components) {
        $name = 'component:' + $c
        if (@($installed | Where-Object { $_ -eq $c -or $_.StartsWith($c + '-') }).Count -gt 0) { $items += Item $name 'present' ''; continue }
        $r = Run $rustup @('component', 'add', [string]$c, '--toolchain', $default)
        if ($r.code -eq 0) { $items += Item $name 'installed' '' } else { $items += Item $name 'failed' $r.text }
    }
}
[ordered]@{ items = $items } | ConvertTo-Json -Compress -Depth 5
exit 0
