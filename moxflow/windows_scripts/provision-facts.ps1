# moxflow: what provisioning finds in the VM, changing nothing: steamcmd, each Steam app's
# manifest, rustup's toolchains, default and the default's components, each scheduled task
# and the SHA-256 of the XML moxflow last registered it from (scheduled-task.ps1 keeps it).
# stdin: {"steamcmd", "apps": [{"app_id", "install_dir"}], "cargo_home", "rustup_home",
#         "toolchain", "tasks": ["name"]}
# stdout: {steamcmd, apps: [{app_id, installed, state_flags}], rustup, toolchains: [lines],
#          default, components: [lines], tasks: [{name, exists, sha256}]}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
function Lines([string]$exe, [string[]]$argv) {
    # PowerShell 5.1 turns a native program's stderr line into a terminating error under 'Stop'
    $ErrorActionPreference = 'Continue'
    @(& $exe @argv 2>$null | ForEach-Object { ([string]$_).Trim() } | Where-Object { $_ })
}
$steamcmd = $false
if ($in.steamcmd) { $steamcmd = Test-Path -LiteralPath ([string]$in.steamcmd) }
$apps = @(foreach ($a in $in.apps) {
    $id = [int]$a.app_id
    $manifest = Join-Path ([string]$a.install_dir) ('steamapps\appmanifest_' + $id + '.acf')
    $installed = Test-Path -LiteralPath $manifest
    $flags = $null
    if ($installed) {
        $m = Select-String -LiteralPath $manifest -Pattern '"StateFlags"\s+"(\d+)"' | Select-Object -First 1
        if ($m) { $flags = [int]$m.Matches[0].Groups[1].Value }
    }
    [ordered]@{ app_id = $id; installed = $installed; state_flags = $flags }
})
$rustup = $false; $toolchains = @(); $default = ''; $components = @()
if ($in.cargo_home) {
    $exe = Join-Path ([string]$in.cargo_home) 'bin\rustup.exe'
    if (Test-Path -LiteralPath $exe) {
        $rustup = $true
        $env:CARGO_HOME = [string]$in.cargo_home
        $env:RUSTUP_HOME = [string]$in.rustup_home
        $toolchains = @(Lines $exe @('toolchain', 'list'))
        $default = [string](@(Lines $exe @('default')) | Select-Object -First 1)
        if ($in.toolchain) {
            $components = @(Lines $exe @('component', 'list', '--installed', '--toolchain', [string]$in.toolchain))
        }
    }
}
$store = 'C:\ProgramData\moxflow\tasks.json'
$known = @{}
if (Test-Path -LiteralPath $store) {
    $saved = Get-Content -LiteralPath $store -Raw | ConvertFrom-Json
    foreach ($p in $saved.PSObject.Properties) { $known[$p.Name] = [string]$p.Value }
}
$tasks = @(foreach ($name in $in.tasks) {
    $n = [string]$name
    $exists = [bool](Get-ScheduledTask -TaskName $n -ErrorAction SilentlyContinue)
    [ordered]@{ name = $n; exists = $exists; sha256 = [string]$known[$n] }
})
[ordered]@{ steamcmd = $steamcmd; apps = $apps; rustup = $rustup; toolchains = $toolchains; default = $default; components = $components; tasks = $tasks } | ConvertTo-Json -Compress -Depth 5
exit 0
