// AGP 8.9 with Kotlin 2.0 under Gradle 8.11.1: the versions ExecuTorch's own Android demo builds with.
plugins {
    id("com.android.application") version "8.9.0"
    id("org.jetbrains.kotlin.android") version "2.0.21"
}

android {
    namespace = "handheld.chat"
    compileSdk = 35

    defaultConfig {
        applicationId = "handheld.chat"
        minSdk = 26
        // 34, not 35: Android 15 draws a targetSdk-35 app edge to edge, which plain Views would need insets for.
        targetSdk = 34
        versionCode = 1
        versionName = "0.1"
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // The runtime that runs a program should be the release that wrote it: handheld pins executorch==1.5.1
    // (pyproject.toml), and tests/test_android_demo.py keeps the two equal. Maven Central has no 1.5.0.
    implementation("org.pytorch:executorch-android:1.5.1")
}
