# moxflow: steamcmd present at the given path (downloaded from Valve and unpacked if not).
# stdin: {"steamcmd": "C:\\steamcmd\\steamcmd.exe"}   stdout: {items: [{item, status, detail}]}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
$exe = [string]$in.steamcmd
$status = 'present'; $detail = ''
if (-not (Test-Path -LiteralPath $exe)) {
    try {
        $dir = Split-Path -Parent $exe
        $zip = Join-Path $env:TEMP 'moxflow-steamcmd.zip'
        New-Item -ItemType Directory -Force -Path $dir | Out-Null
        Invoke-WebRequest -UseBasicParsing -Uri 'https://steamcdn-a.akamaihd.net/client/installer/steamcmd.zip' -OutFile $zip
        Expand-Archive -LiteralPath $zip -DestinationPath $dir -Force
        Remove-Item -LiteralPath $zip -Force
        $status = 'installed'
    } catch { $status = 'failed'; $detail = $_.Exception.Message }
}
[ordered]@{ items = @([ordered]@{ item = 'steamcmd'; status = $status; detail = $detail }) } | ConvertTo-Json -Compress -Depth 5
exit 0
