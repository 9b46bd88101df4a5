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
function Item($name, $status, $detail) { [ordered]@{ item = $name; status = $status; detail = [string]$detail } }
if (Test-Path -LiteralPath $rustup) { $items += Item 'rustup' 'present' '' } else {
    $init = Join-Path $env:TEMP 'moxflow-rustup-init.exe'
    Invoke-WebRequest -UseBasicParsing -Uri 'https://static.rust-lang.org/rustup/dist/x86_64-pc-windows-msvc/rustup-init.exe' -OutFile $init
    $text = (& $init -y --default-toolchain $default --profile minimal --default-host x86_64-pc-windows-msvc --no-modify-path 2>&1 | Out-String)
    if ($LASTEXITCODE -eq 0) { $items += Item 'rustup' 'installed' '' } else { $items += Item 'rustup' 'failed' $text }
}
if (Test-Path -LiteralPath $rustup) {
    $have = @(& $rustup toolchain list)
    foreach ($t in @(@($default) + @($in.toolchains) | Select-Object -Unique)) {
        $name = 'toolchain:' + $t
        if (@($have | Where-Object { $_ -eq $t -or $_.StartsWith($t + '-') -or $_.StartsWith($t + ' ') }).Count -gt 0) { $items += Item $name 'present' ''; continue }
        $text = (& $rustup toolchain install $t --profile minimal 2>&1 | Out-String)
        if ($LASTEXITCODE -eq 0) { $items += Item $name 'installed' '' } else { $items += Item $name 'failed' $text }
    }
    $current = (& $rustup default 2>&1 | Out-String)
    if (-not $current.StartsWith($default)) {
        $text = (& $rustup default $default 2>&1 | Out-String)
        if ($LASTEXITCODE -eq 0) { $items += Item 'default' 'updated' $default } else { $items += Item 'default' 'failed' $text }
    } else { $items += Item 'default' 'present' $default }
    $installed = @(& $rustup component list --installed --toolchain $default)
    foreach ($c in $in.components) {
        $name = 'component:' + $c
        if (@($installed | Where-Object { $_ -eq $c -or $_.StartsWith($c + '-') }).Count -gt 0) { $items += Item $name 'present' ''; continue }
        $text = (& $rustup component add $c --toolchain $default 2>&1 | Out-String)
        if ($LASTEXITCODE -eq 0) { $items += Item $name 'installed' '' } else { $items += Item $name 'failed' $text }
    }
}
[ordered]@{ items = $items } | ConvertTo-Json -Compress -Depth 5
exit 0
