module hreg.dev/go/hreg

go 1.19
