# cibuildwheel before-all on Windows: nvcc, the CUDA runtime and cuBLAS of CUDA $env:BNB_CUDA_MAJOR
# through NVIDIA's network installer (components only, no driver). The release workflow sets
# CUDA_PATH for the whole job (cibuildwheel's later steps inherit it); this checks it is right.
$ErrorActionPreference = "Stop"
$versions = @{ "12" = "12.8.1"; "13" = "13.0.2" }
$version = $versions[$env:BNB_CUDA_MAJOR]
if (-not $version) { throw "error: BNB_CUDA_MAJOR='$env:BNB_CUDA_MAJOR'; set it to 12 or 13" }
$mm = ($version -split '\.')[0..1] -join '.'
$url = "https://developer.download.nvidia.com/compute/cuda/$version/network_installers/cuda_${version}_windows_network.exe"
Invoke-WebRequest $url -OutFile "$env:TEMP\cuda.exe"
$components = "nvcc_$mm cudart_$mm cublas_$mm cublas_dev_$mm visual_studio_integration_$mm"
Start-Process -Wait -NoNewWindow -FilePath "$env:TEMP\cuda.exe" -ArgumentList "-s $components"
$cudaPath = "C:\Program Files\NVIDIA GPU Computing Toolkit\CUDA\v$mm"
if ($env:CUDA_PATH -ne $cudaPath) { throw "error: CUDA_PATH is '$env:CUDA_PATH'; set it to '$cudaPath' for CUDA $mm" }
& "$cudaPath\bin\nvcc.exe" --version
