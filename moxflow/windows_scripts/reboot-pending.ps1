# moxflow: whether Windows waits for a reboot (servicing, Windows Update, pending file
# renames) and when it last booted.
# stdin: {}   stdout: one JSON line {reboot_pending, reasons, last_boot}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$null = [Console]::In.ReadToEnd()
$reasons = @()
if (Test-Path -LiteralPath 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending') {
    $reasons += 'component-based-servicing'
}
if (Test-Path -LiteralPath 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired') {
    $reasons += 'windows-update'
}
$sm = Get-ItemProperty -LiteralPath 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager' -Name PendingFileRenameOperations -ErrorAction SilentlyContinue
if ($sm -and $sm.PendingFileRenameOperations) { $reasons += 'pending-file-rename' }
$boot = (Get-CimInstance Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')
[ordered]@{ reboot_pending = ($reasons.Count -gt 0); reasons = $reasons; last_boot = $boot } | ConvertTo-Json -Compress -Depth 5
exit 0
