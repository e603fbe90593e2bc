module hreg

go 1.19
