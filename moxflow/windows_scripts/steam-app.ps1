# moxflow: one Steam app by id, through steamcmd; the login goes in a runscript file that is
# deleted afterwards, never on a command line; the password never in its output.
# stdin: {"steamcmd", "install_dir", "app_id": 1234, "username": null, "password": null}
# stdout: {items: [{item, status, detail}]}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
$appId = [int]$in.app_id
$dir = [string]$in.install_dir
$item = 'steam:' + $appId
function Done($status, $detail) {
    [ordered]@{ items = @([ordered]@{ item = $item; status = $status; detail = $detail }) } | ConvertTo-Json -Compress -Depth 5
    exit 0
}
foreach ($v in @($dir, [string]$in.username, [string]$in.password)) {
    if ($v -match '["\r\n]') { Done 'failed' 'a value holds a quote or a line break' }
}
$login = 'login anonymous'
if ($in.username) { $login = 'login "' + $in.username + '" "' + $in.password + '"' }
$manifest = Join-Path $dir ('steamapps\appmanifest_' + $appId + '.acf')
$before = Test-Path -LiteralPath $manifest
$runscript = Join-Path $env:TEMP ('moxflow-steam-' + [guid]::NewGuid().ToString() + '.txt')
$lines = @('@ShutdownOnFailedCommand 1', '@NoPromptForPassword 1', ('force_install_dir "' + $dir + '"'), $login, ('app_update ' + $appId + ' validate'), 'quit')
function Run([string]$exe, [string[]]$argv) {
    # PowerShell 5.1 turns a native program's stderr line into a terminating error under 'Stop'
    $ErrorActionPreference = 'Continue'
    $text = (@(& $exe @argv 2>&1 | ForEach-Object { [string]$_ }) -join "`n")
    [pscustomobject]@{ code = $LASTEXITCODE; text = $text }
}
try {
    [IO.File]::WriteAllLines($runscript, [string[]]$lines)
    $r = Run ([string]$in.steamcmd) @('+runscript', $runscript)
    $text = $r.text; $code = $r.code
} finally { Remove-Item -LiteralPath $runscript -Force -ErrorAction SilentlyContinue }
if ($in.password) { $text = $text.Replace([string]$in.password, '********') }
if ($text -match ("App '" + $appId + "' already up to date")) { Done 'present' '' }
if ($text -match ("Success! App '" + $appId + "' fully installed")) {
    if ($before) { Done 'updated' '' } else { Done 'installed' '' }
}
$last = @($text -split "`n" | Where-Object { $_.Trim() } | Select-Object -Last 3) -join ' | '
Done 'failed' ('steamcmd exit ' + $code + ': ' + $last)
